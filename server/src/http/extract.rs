//! Extractors that turn malformed requests into [`AppError`]s naming the field at fault.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use redline_core::wire::FieldError;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// A JSON body. Unlike `axum::Json`, a wrong type deep inside the body is reported with its path
/// (`steps[3].step`), and every rejection is an [`AppError`].
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default();
            if !ct.starts_with("application/json") {
                return Err(AppError::UnsupportedMediaType(format!(
                    "Content-Type is {ct:?}; send application/json"
                )));
            }
        }
        let limit = body_limit(&req);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge { limit }
            } else {
                AppError::InvalidJson(format!("cannot read the request body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The configured body limit, stashed in the request extensions by the router.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

fn body_limit(req: &Request) -> usize {
    req.extensions().get::<BodyLimit>().map_or(0, |l| l.0)
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
