//! The one error type of the HTTP layer. Every failure becomes a JSON [`ErrorBody`] with a stable
//! `code`; internal errors are logged once, here, and never shown to clients.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use redline_core::wire::{ErrorBody, ErrorDetail, FieldError};

use crate::store::StoreError;

pub type Result<T, E = AppError> = std::result::Result<T, E>;

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
            StoreError::Corrupt(_) | StoreError::Database(_) | StoreError::Migrate(_) => {
                Self::Internal(e.into())
            }
        }
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
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
