//! What every handler shares.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub auth: Arc<Auth>,
    /// Cancelled on shutdown; open event streams end with it.
    pub shutdown: CancellationToken,
    pub max_body_bytes: usize,
}
