//! Redline's server: HTTP API v1 over one [`store::Store`] (SQLite or PostgreSQL), bearer-token
//! auth and signal delivery. [`startup::Server`] puts them together from a [`config::ServerConfig`].

pub mod auth;
pub mod charts;
pub mod config;
pub mod error;
pub mod http;
pub mod startup;
pub mod state;
pub mod store;

pub use config::ServerConfig;
pub use startup::Server;
