//! End-to-end tests: the real server over real HTTP, on both real stores, and the real binary.
//! One test binary (fast to link); each `both_stores!` test runs once per store.

mod harness;

mod alert_pages;
mod auth;
mod bad_input;
mod browser;
mod cli;
mod delivery;
mod lifecycle;
mod metrics;
mod openapi;
mod pages;
mod receiver;
mod rules;
mod runs;
mod security;
mod series;
mod signals;
mod steps;
mod train;
