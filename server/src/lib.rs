//! Redline's server: HTTP API v1 over one [`store::Store`] (SQLite or PostgreSQL), bearer-token
//! auth, rules on every step, signal delivery and webhook alerts. [`startup::Server`] puts them together from a [`config::ServerConfig`].

pub mod alerts;
pub mod auth;
pub mod charts;
pub mod config;
pub mod error;
pub mod http;
mod listen;
pub mod rules;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod throwaway;

pub use config::ServerConfig;
pub use startup::Server;
