//! Security headers on every response, pages and API alike (a JSON error rendered by a browser
//! is a page too). A handler that sets one of them itself keeps its own.

use axum::http::HeaderValue;
use axum::http::header::{self, HeaderName};
use axum::response::Response;

/// The pages load only their own script and stylesheet (`/static/…`; no inline script, no
/// inline style, no event-handler attributes), draw charts as inline SVG, fetch from this
/// server, post forms to it, and may not be framed: the run page's stop and β buttons cannot
/// be clickjacked.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

const HEADERS: [(HeaderName, &str); 6] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    // For browsers that predate frame-ancestors.
    (header::X_FRAME_OPTIONS, "DENY"),
    // Run ids and filters in URLs are nobody else's business.
    (header::REFERRER_POLICY, "same-origin"),
    // Another site's window cannot script this one, nor load its answers as its own.
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    ),
    (
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    ),
];

/// Adds the headers a response does not set itself.
pub async fn add(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}
