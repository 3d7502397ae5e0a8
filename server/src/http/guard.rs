//! What keeps the web pages a user visits from driving the server on their behalf, checked on
//! every request before any handler runs:
//!
//! - **DNS rebinding**: a page on `evil.example` whose name later resolves to 127.0.0.1 talks to
//!   this server as a same-origin page, with its own `Host`. A server bound to loopback therefore
//!   answers only loopback host names, and the names given with `--public-host`.
//! - **Cross-site writes**: a page can send a POST to any address without a CORS preflight when the
//!   body is a "simple" type (`text/plain`, forms, no type at all). Every write that a browser
//!   marks as cross-site (`Sec-Fetch-Site`, `Origin`) is refused, and API writes must declare a
//!   content type that a page cannot send without a preflight, which this server never grants.
//!   Trainers and curl send neither header and are not affected.
//! - **Oversized bodies**: a declared `Content-Length` over the limit is refused before a byte of
//!   the body is read.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use url::Url;

use super::media::MediaType;
use crate::error::AppError;
use crate::state::AppState;

/// The host names a server answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// Any `Host`: a server listening beyond loopback with no `--public-host`, protected by tokens.
    Any,
    /// Only these names (lowercase, without port).
    Only(Vec<String>),
}

/// The names every loopback server answers to.
pub const LOOPBACK_HOSTS: [&str; 3] = ["127.0.0.1", "localhost", "[::1]"];

impl HostPolicy {
    /// Loopback names plus `public`, unless the server listens beyond loopback and names none.
    pub fn new(listens_on_loopback: bool, public: &[String]) -> Self {
        if !listens_on_loopback && public.is_empty() {
            return Self::Any;
        }
        let mut names: Vec<String> = LOOPBACK_HOSTS.map(str::to_owned).to_vec();
        names.extend(public.iter().map(|h| h.trim().to_ascii_lowercase()));
        Self::Only(names)
    }

    fn allows(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(names) => names.iter().any(|n| n == host),
        }
    }
}

/// Checks a `--public-host` value: a host name or address, without scheme, port or path.
pub fn parse_public_host(raw: &str) -> Result<String, String> {
    let host = raw.trim().to_ascii_lowercase();
    let ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')));
    if ok {
        Ok(host)
    } else {
        Err(format!(
            "public host {raw:?} must be a host name or address, such as redline.example.com, \
             without scheme, port or path (IPv6 in brackets)"
        ))
    }
}

/// The request's authority (`host[:port]`): the URI's in absolute form, else the `Host` header.
fn authority(req: &Request) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_ascii_lowercase());
    }
    let value = req.headers().get(header::HOST)?.to_str().ok()?;
    Some(value.trim().to_ascii_lowercase())
}

/// `host[:port]` without the port.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Why a state-changing request looks cross-site, if it does.
fn cross_site(headers: &HeaderMap, authority: Option<&str>) -> Option<String> {
    let text = |v: &HeaderValue| v.to_str().unwrap_or("(not text)").trim().to_owned();
    if let Some(site) = headers.get("sec-fetch-site").map(text) {
        // `none` is the user's own action (typed URL, bookmark); `same-site` includes every
        // other port on localhost, so it is not enough.
        if !matches!(site.as_str(), "same-origin" | "none") {
            return Some(format!("the browser marked it Sec-Fetch-Site: {site}"));
        }
    }
    let origin = headers.get(header::ORIGIN).map(text)?;
    match authority {
        Some(here) if is_same_origin(&origin, here) => None,
        _ => Some(format!(
            "it comes from Origin {origin}, not from this server ({})",
            authority.unwrap_or("no Host")
        )),
    }
}

/// Whether `origin` (an Origin or a Referer) names the server reached as `host` (the Host
/// header): the same host and port, a port left out being its scheme's default. Parsed as URLs,
/// so case, trailing slashes and default ports compare as browsers mean them; `null` and
/// anything unparsable are another origin.
pub(crate) fn is_same_origin(origin: &str, host: &str) -> bool {
    let Ok(from) = Url::parse(origin) else {
        return false;
    };
    let Ok(here) = Url::parse(&format!("{}://{host}", from.scheme())) else {
        return false;
    };
    from.host() == here.host() && from.port_or_known_default() == here.port_or_known_default()
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The whole application's first check: host, cross-site writes, declared body size.
pub async fn check_request(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let authority = authority(&req);
    match authority.as_deref().map(host_of) {
        Some(host) if state.hosts.allows(host) => {}
        host => {
            return Err(AppError::MisdirectedRequest(format!(
                "this server does not answer to host {}; it answers to {} (name others with \
                 --public-host)",
                host.map_or_else(|| "(none: send a Host header)".to_owned(), str::to_owned),
                match &*state.hosts {
                    HostPolicy::Only(names) => names.join(", "),
                    HostPolicy::Any => "any host".to_owned(),
                }
            )));
        }
    }
    if is_write(req.method())
        && let Some(why) = cross_site(req.headers(), authority.as_deref())
    {
        return Err(AppError::Forbidden(format!(
            "cross-site request refused: {why}. Pages of other sites may not change this \
             server; use the dashboard itself, the API from a script, or the CLI"
        )));
    }
    if let Some(declared) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && declared > state.body.limit as u64
    {
        return Err(AppError::PayloadTooLarge {
            limit: state.body.limit,
        });
    }
    Ok(next.run(req).await)
}

/// API writes must declare a body type a web page cannot send without a CORS preflight: JSON,
/// or TOML for rule files. Each body extractor then checks that the type is the one it reads.
pub async fn require_api_media_type(req: Request, next: Next) -> Result<Response, AppError> {
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        MediaType::of(req.headers()).require_one_of(&[MediaType::Json, MediaType::Toml])?;
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_taken_off_hosts_of_every_form() {
        assert_eq!(host_of("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of("[::1]:80"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
    }

    #[test]
    fn loopback_servers_answer_loopback_names_and_the_public_hosts_only() {
        let p = HostPolicy::new(true, &["Redline.Example".into()]);
        for h in ["127.0.0.1", "localhost", "[::1]", "redline.example"] {
            assert!(p.allows(h), "{h}");
        }
        assert!(!p.allows("rebind.evil.example"));
        assert_eq!(HostPolicy::new(false, &[]), HostPolicy::Any);
        assert!(parse_public_host("https://x.example/").is_err());
        assert!(parse_public_host("x.example:8080").is_err());
        assert_eq!(parse_public_host(" X.example ").unwrap(), "x.example");
    }

    #[test]
    fn cross_site_is_judged_from_sec_fetch_site_and_origin() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let here = Some("127.0.0.1:8080");
        assert_eq!(cross_site(&headers(&[]), here), None);
        let same = headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(cross_site(&same, here), None);
        assert!(cross_site(&headers(&[("origin", "https://evil.example")]), here).is_some());
        assert!(cross_site(&headers(&[("origin", "http://127.0.0.1:3000")]), here).is_some());
        assert!(cross_site(&headers(&[("origin", "null")]), here).is_some());
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")]), here).is_some());
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")]), here).is_some());
        let default_port = headers(&[("origin", "http://redline.example")]);
        assert_eq!(cross_site(&default_port, Some("redline.example:80")), None);
    }
}
