//! The one error type of the HTTP layer. Every failure becomes a JSON [`ErrorBody`] with a stable
//! `code`; internal errors are logged once, here, and never shown to clients.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use redline_core::wire::{ErrorBody, ErrorDetail, FieldError};

use crate::store::StoreError;

pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// What a 503 asks clients to wait before trying again: a database restart usually takes seconds.
pub const RETRY_AFTER_SECS: u16 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A field of the body, path or query failed validation.
    #[error(transparent)]
    InvalidField(#[from] FieldError),
    /// The body is not JSON at all, or not the JSON expected.
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    /// The request names a host this server does not answer to (DNS rebinding, a wrong name).
    #[error("{0}")]
    MisdirectedRequest(String),
    /// The client took too long to send its body.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RunNotFound(_)
            | StoreError::SeriesNotFound { .. }
            | StoreError::SignalNotFound { .. }
            | StoreError::TokenNotFound(_)
            | StoreError::RuleSetNotFound(_)
            | StoreError::WebhookNotFound(_) => Self::NotFound(e.to_string()),
            StoreError::Invalid { field, message } => {
                Self::InvalidField(FieldError::new(field, message))
            }
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::RulesMoved => Self::Unavailable(
                "another server was evaluating this run's rules at the same time; retry".into(),
            ),
            StoreError::Database(ref db) if is_outage(db) => {
                tracing::warn!(error = %e, "the database is unreachable");
                Self::Unavailable(
                    "the database is unavailable; nothing was stored, retry after the \
                     Retry-After delay"
                        .into(),
                )
            }
            StoreError::Corrupt(_) | StoreError::Database(_) | StoreError::Migrate(_) => {
                Self::Internal(e.into())
            }
        }
    }
}

/// Whether a database error means "not reachable now" (a restart, a network cut, a full pool)
/// rather than a bug: the request may succeed as it is when retried.
fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL's class 08 (connection exception) and 57P01-57P03 (admin shutdown,
        // crash shutdown, cannot connect now).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// A blocking task (chart drawing) that panicked or was cancelled.
impl From<tokio::task::JoinError> for AppError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(e.into())
    }
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidField(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::MisdirectedRequest(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected_request"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The message a client may see, kept on the response so pages can show it as HTML.
#[derive(Debug, Clone)]
pub struct Message(pub String);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let (message, field) = match self {
            Self::InvalidField(e) => (e.message, Some(e.field)),
            Self::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                (
                    "internal server error; the server log has the details".to_owned(),
                    None,
                )
            }
            Self::Unavailable(ref m) => {
                tracing::warn!(reason = %m, "not ready");
                (self.to_string(), None)
            }
            other => (other.to_string(), None),
        };
        let shown = Message(match &field {
            Some(f) => format!("{f}: {message}"),
            None => message.clone(),
        });
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
                field,
            },
        };
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(shown);
        let headers = response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The reporter waits this long before its next try, instead of its own backoff.
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            // The body was not read: the connection cannot carry another request.
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
