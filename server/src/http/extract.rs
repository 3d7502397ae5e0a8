//! Extractors that turn malformed requests into [`AppError`]s naming the field at fault.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use redline_core::wire::FieldError;
use serde::de::DeserializeOwned;

use super::media::MediaType;
use crate::error::AppError;

/// A JSON body. Unlike `axum::Json`, a wrong type deep inside the body is reported with its path
/// (`steps[3].step`), and every rejection is an [`AppError`].
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        MediaType::of(req.headers()).require_one_of(&[MediaType::Json])?;
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A rule file: `application/toml`, UTF-8.
#[derive(Debug)]
pub struct TomlBody(pub String);

impl<S: Send + Sync> FromRequest<S> for TomlBody {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        MediaType::of(req.headers()).require_one_of(&[MediaType::Toml])?;
        let bytes = read_body(req, state).await?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
            FieldError::new(
                "source",
                format!(
                    "is not UTF-8: invalid byte at offset {}",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        Ok(Self(text))
    }
}

/// How much of a body the server reads, and for how long; the router puts it on every request.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    pub limit: usize,
    /// The whole body must arrive within this time, so a client trickling bytes cannot hold a
    /// connection and its buffer forever.
    pub timeout: Duration,
}

/// Reads the whole body under the [`BodyRules`]: 413 past the limit, 408 past the deadline.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, AppError> {
    let rules = req
        .extensions()
        .get::<BodyRules>()
        .copied()
        .expect("the router sets BodyRules on every request");
    let read = Bytes::from_request(req, state);
    match tokio::time::timeout(rules.timeout, read).await {
        Err(_) => Err(AppError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            rules.timeout.as_secs()
        ))),
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(AppError::PayloadTooLarge { limit: rules.limit })
        }
        Ok(Err(rejection)) => Err(AppError::InvalidJson(format!(
            "cannot read the request body: {rejection}"
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            AppError::InvalidJson(format!("request body is not valid JSON: {inner}"))
        } else if path == "." {
            AppError::InvalidJson(format!("request body: {inner}"))
        } else {
            FieldError::new(path, inner.to_string()).into()
        }
    })?;
    de.end()
        .map_err(|e| AppError::InvalidJson(format!("request body has trailing data: {e}")))?;
    Ok(value)
}

/// Query parameters, read field by field so an error names the parameter, and an unknown
/// parameter (a typo) is refused instead of ignored.
#[derive(Debug)]
pub struct QueryParams(HashMap<String, Vec<String>>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        let query = parts.uri.query().unwrap_or_default();
        for (k, v) in url_pairs(query) {
            map.entry(k).or_default().push(v);
        }
        Ok(Self(map))
    }
}

pub fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl QueryParams {
    /// Refuses parameters outside `known`, and any given more than once.
    pub fn only(&self, known: &[&str]) -> Result<(), AppError> {
        self.only_repeating(known, &[])
    }

    /// As [`Self::only`], but the parameters in `repeatable` may be given several times.
    pub fn only_repeating(&self, known: &[&str], repeatable: &[&str]) -> Result<(), AppError> {
        for (k, values) in &self.0 {
            // No store can look a NUL up (PostgreSQL refuses it in text): say so, for both.
            if values.iter().any(|v| v.contains('\0')) {
                return Err(FieldError::new(k.clone(), "must not contain a NUL character").into());
            }
            if !known.contains(&k.as_str()) {
                let message = format!("is not a parameter here; known are {}", known.join(", "));
                return Err(FieldError::new(k.clone(), message).into());
            }
            if values.len() > 1 && !repeatable.contains(&k.as_str()) {
                return Err(FieldError::new(k.clone(), "is given more than once").into());
            }
        }
        Ok(())
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.first()).map(String::as_str)
    }

    /// Every value of a repeatable parameter, in order.
    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0.get(name).into_iter().flatten().map(String::as_str)
    }

    /// Parses an optional parameter, which must lie in `range` when given.
    pub fn parse<T>(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<Option<T>, AppError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        let Some(raw) = self.str(name) else {
            return Ok(None);
        };
        let v: T = raw
            .parse()
            .map_err(|_| FieldError::new(name, format!("must be a whole number, got {raw:?}")))?;
        if !range.contains(&v) {
            return Err(FieldError::new(
                name,
                format!(
                    "must be between {} and {}, got {v}",
                    range.start(),
                    range.end()
                ),
            )
            .into());
        }
        Ok(Some(v))
    }

    pub fn flag(&self, name: &str) -> Result<Option<bool>, AppError> {
        match self.str(name) {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(other) => {
                Err(FieldError::new(name, format!("must be true or false, got {other:?}")).into())
            }
        }
    }
}
