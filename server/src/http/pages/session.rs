//! Who is looking at a page. Browsers cannot send bearer headers, so when auth is on the login
//! form puts the API token in an HttpOnly, SameSite=Strict cookie. Every form carries a CSRF
//! token: an HMAC, under a key made at server start, of the session's token.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use cookie::Cookie;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::error::PageError;
use super::view::{Chrome, Form, PageQuery};
use crate::error::AppError;
use crate::http::guard::is_same_origin;
use crate::state::AppState;
use serde::Deserialize;
use utoipa::IntoParams;

const COOKIE: &str = "redline_token";

/// The browser's session, checked against the server's auth.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token from the cookie, when it is a valid one.
    token: Option<String>,
    /// Whether this viewer may create signals (the run controls).
    pub can_write: bool,
    pub csrf: String,
}

impl Viewer {
    /// The viewer of a page at `path`; a login redirect when reads need a token and there is none.
    pub async fn of(state: &AppState, headers: &HeaderMap, path: &str) -> Result<Self, PageError> {
        let viewer = Self::from_cookie(state, headers).await?;
        let auth = &state.auth;
        if auth.enabled && !auth.public_read && viewer.token.is_none() {
            return Err(PageError::Login {
                next: path.to_owned(),
            });
        }
        Ok(viewer)
    }

    async fn from_cookie(state: &AppState, headers: &HeaderMap) -> Result<Self, AppError> {
        let mut token = cookie(headers, COOKIE);
        if let Some(t) = &token
            && !state.auth.accepts(t, &state.store).await?
        {
            token = None;
        }
        let can_write = !state.auth.enabled || token.is_some();
        let csrf = csrf_token(state, token.as_deref());
        Ok(Self {
            token,
            can_write,
            csrf,
        })
    }

    /// Refuses a form post that is not from this server's own page, or not allowed to write.
    pub async fn for_post(
        state: &AppState,
        headers: &HeaderMap,
        csrf: &str,
    ) -> Result<Self, AppError> {
        require_same_origin(headers)?;
        let viewer = Self::from_cookie(state, headers).await?;
        if !viewer.can_write {
            return Err(AppError::Unauthorized(
                "log in with a token to use the run controls",
            ));
        }
        if !bool::from(csrf.as_bytes().ct_eq(viewer.csrf.as_bytes())) {
            return Err(AppError::Forbidden(
                "the form has expired (the server restarted or you logged in again): reload the page".into(),
            ));
        }
        Ok(viewer)
    }

    pub fn logged_in(&self) -> bool {
        self.token.is_some()
    }
}

fn csrf_token(state: &AppState, token: Option<&str>) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(state.page_secret.as_slice()).expect("any key length");
    mac.update(b"csrf\0");
    mac.update(token.unwrap_or_default().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn require_same_origin(headers: &HeaderMap) -> Result<(), AppError> {
    if same_origin(headers) {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "cross-origin form posts are refused".into(),
        ))
    }
}

/// A post whose Origin (or, failing that, Referer) names another host is a cross-site request.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|h| h.to_str().ok());
    match (origin, host) {
        (None, _) => true,
        (Some(o), Some(host)) => is_same_origin(o, host),
        (Some(_), None) => false,
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty())
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
    next: String,
    error: Option<String>,
}

/// Where to go after logging in: a path on this server only, never another site.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_owned(),
        _ => "/".to_owned(),
    }
}

/// The login page's query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LoginParams {
    /// Where to go after logging in: a path on this server.
    next: Option<String>,
}

pub async fn login_page(
    State(state): State<AppState>,
    PageQuery(q): PageQuery<LoginParams>,
) -> Result<Html<String>, PageError> {
    let page = LoginPage {
        chrome: Chrome::new(&state, None),
        next: local_path(q.next.as_deref()),
        error: None,
    };
    super::view::render(&page)
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, PageError> {
    require_same_origin(&headers)?;
    let next = local_path(form.get("next"));
    let token = form.get("token").unwrap_or_default().trim().to_owned();
    if !state.auth.enabled {
        return Ok(Redirect::to(&next).into_response());
    }
    if token.is_empty() || !state.auth.accepts(&token, &state.store).await? {
        let page = LoginPage {
            chrome: Chrome::new(&state, None),
            next,
            error: Some("that token is not known or was revoked".into()),
        };
        let html = super::view::render(&page)?;
        return Ok((axum::http::StatusCode::UNAUTHORIZED, html).into_response());
    }
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000");
    let mut response = Redirect::to(&next).into_response();
    let value = HeaderValue::from_str(&cookie)
        .map_err(|_| AppError::Forbidden("tokens are plain ASCII".into()))?;
    response.headers_mut().insert(header::SET_COOKIE, value);
    Ok(response)
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, PageError> {
    Viewer::for_post(&state, &headers, form.get("csrf").unwrap_or_default()).await?;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("redline_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_path(Some("/runs/a")), "/runs/a");
        assert_eq!(local_path(Some("//evil.example")), "/");
        assert_eq!(local_path(Some("https://evil.example")), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn cross_origin_posts_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; redline_token=rl_x; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("rl_x"));
    }
}
