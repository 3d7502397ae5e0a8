//! Alerts leave through the webhook outbox: rule events are queued in the transaction that
//! raised them ([`crate::store::AlertStore`]) and delivered here, signed, retried with backoff,
//! and every attempt logged. See docs/alerts.md.

mod deliver;
pub mod guard;
pub mod payload;
pub mod sign;
mod worker;

pub use deliver::{DeliveryConfig, deliver_now};
pub use worker::{Outbox, spawn_worker};
