//! How a page reports a failure: the API's [`AppError`], shown as HTML with the same status, or
//! a redirect to the login form.

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::error::AppError;
use crate::store::StoreError;

#[derive(Debug)]
pub enum PageError {
    App(AppError),
    /// Reads need a token and the browser sent none: log in, then come back to `next`.
    Login {
        next: String,
    },
}

impl<E: Into<AppError>> From<E> for PageError {
    fn from(e: E) -> Self {
        Self::App(e.into())
    }
}

impl PageError {
    pub fn store(e: StoreError) -> Self {
        Self::App(e.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            Self::Login { next } => {
                let to = format!("/login?next={}", super::view::url_encode(&next));
                Redirect::to(&to).into_response()
            }
            Self::App(e) => {
                // The API's response says what to show; internal errors are logged there, once.
                let api = e.into_response();
                let status = api.status();
                let message = match status {
                    StatusCode::INTERNAL_SERVER_ERROR => {
                        "internal server error; the server log has the details".to_owned()
                    }
                    _ => api
                        .extensions()
                        .get::<crate::error::Message>()
                        .map(|m| m.0.clone())
                        .unwrap_or_default(),
                };
                let page = ErrorPage {
                    status: status.as_u16(),
                    reason: status.canonical_reason().unwrap_or("error"),
                    message: &message,
                };
                let body = page.render().unwrap_or_else(|_| message.clone());
                (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
            }
        }
    }
}
