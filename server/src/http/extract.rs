//! Extractors that turn malformed requests into [`AppError`]s naming the field at fault.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use redline_core::wire::FieldError;
use serde::de::DeserializeOwned;
use utoipa::openapi::path::Parameter;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, Number};

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

/// Query parameters deserialised into `T`. `T`'s `IntoParams` derive is also what the OpenAPI
/// document shows, so the parser and the document read one struct. Beyond the types:
/// - a parameter `T` does not declare (a typo) is refused instead of ignored, naming the known ones;
/// - only array parameters may be repeated;
/// - an empty value (`?project=`, what an empty form field sends) is the parameter left out;
/// - a NUL is refused: no store can look it up (PostgreSQL refuses it in text).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + IntoParams> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

/// The query string as `T`, under [`Query`]'s rules.
pub fn parse_query<T: DeserializeOwned + IntoParams>(query: &str) -> Result<T, AppError> {
    from_pairs(&checked_pairs(query, &T::into_params(|| None))?)
}

/// The query's pairs, decoded, each one `declared`, under [`Query`]'s rules; empty values left out.
pub fn checked_pairs(
    query: &str,
    declared: &[Parameter],
) -> Result<Vec<(String, String)>, AppError> {
    let mut given: Vec<(String, String)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let Some(p) = declared.iter().find(|p| p.name == k) else {
            let known: Vec<&str> = declared.iter().map(|p| p.name.as_str()).collect();
            let message = format!("is not a parameter here; known are {}", known.join(", "));
            return Err(FieldError::new(k, message).into());
        };
        if v.contains('\0') {
            return Err(FieldError::new(k, "must not contain a NUL character").into());
        }
        let repeatable = matches!(&p.schema, Some(RefOr::T(Schema::Array(_))));
        if !repeatable && seen.iter().any(|g| *g == k) {
            return Err(FieldError::new(k, "is given more than once").into());
        }
        seen.push(k.clone().into_owned());
        if !v.is_empty() {
            check_bounds(p, &v)?;
            given.push((k.into_owned(), v.into_owned()));
        }
    }
    Ok(given)
}

/// `T` from checked pairs; a type error names the parameter.
pub fn from_pairs<T: DeserializeOwned>(pairs: &[(String, String)]) -> Result<T, AppError> {
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let de = serde_html_form::Deserializer::new(form_urlencoded::parse(encoded.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing parameter is reported at the top level, by serde: name it.
        match inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'))
        {
            Some((name, _)) => FieldError::new(name, "is required").into(),
            None => FieldError::new(path, readable(inner)).into(),
        }
    })
}

/// Refuses a step range whose `to` lies below its `from` (both optional), naming `to`.
pub fn step_range(from: Option<i64>, to: Option<i64>) -> Result<(), AppError> {
    match (from, to) {
        (Some(f), Some(t)) if f > t => {
            let message = format!("must not be below from ({f}), got {t}");
            Err(FieldError::new("to", message).into())
        }
        _ => Ok(()),
    }
}

/// A boolean parameter as a query writes it: `true` or `1`, `false` or `0`
/// (`#[serde(default, deserialize_with = "extract::flag")]`).
pub fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match <&str as serde::Deserialize>::deserialize(d)? {
        "true" | "1" => Ok(Some(true)),
        "false" | "0" => Ok(Some(false)),
        other => Err(serde::de::Error::custom(format!(
            "must be true or false, got {other:?}"
        ))),
    }
}

/// The standard library's number-parsing messages, and serde's for an unknown name, say what
/// went wrong rather than what was wanted.
fn readable(message: String) -> String {
    if let Some((got, wanted)) = message
        .strip_prefix("unknown variant `")
        .and_then(|r| r.split_once("`, expected "))
    {
        let wanted = wanted.trim_start_matches("one of ").replace('`', "");
        return format!("must be one of {wanted}, got {got:?}");
    }
    match message.as_str() {
        "invalid digit found in string"
        | "number too large to fit in target type"
        | "number too small to fit in target type" => format!("must be a whole number ({message})"),
        "invalid float literal" => format!("must be a number ({message})"),
        _ => message,
    }
}

/// The bounds a parameter's schema documents (`#[param(minimum = 1, maximum = 1000)]`) are the
/// bounds enforced: the document cannot promise a range the server does not keep.
fn check_bounds(param: &Parameter, raw: &str) -> Result<(), AppError> {
    let Some(RefOr::T(Schema::Object(schema))) = &param.schema else {
        return Ok(());
    };
    let Ok(value) = raw.parse::<f64>() else {
        return Ok(()); // not a number: deserialising says so, naming the expected type
    };
    let bound = |n: Option<&Number>| {
        n.map(|n| match *n {
            Number::Int(i) => i as f64,
            Number::UInt(u) => u as f64,
            Number::Float(f) => f,
        })
    };
    let (low, high) = (
        bound(schema.minimum.as_ref()),
        bound(schema.maximum.as_ref()),
    );
    if low.is_some_and(|l| value < l) || high.is_some_and(|h| value > h) {
        let range = match (low, high) {
            (Some(l), Some(h)) => format!("between {l} and {h}"),
            (Some(l), None) => format!("at least {l}"),
            (None, Some(h)) => format!("at most {h}"),
            (None, None) => unreachable!("a bound was crossed"),
        };
        let message = format!("must be {range}, got {raw}");
        return Err(FieldError::new(param.name.clone(), message).into());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use redline_core::wire::MAX_STEP;
    use serde::Deserialize;
    use utoipa::openapi::{RefOr, Schema};

    use super::parse_query;
    use crate::error::AppError;

    /// Holds the `#[param(maximum)]` of `T`'s `from` and `to` to `MAX_STEP`: attributes take
    /// only literals, so the constant is written out there.
    pub(crate) fn step_bounds_are_max_step<T: utoipa::IntoParams>() {
        let params = T::into_params(|| None);
        let steps: Vec<_> = params
            .iter()
            .filter(|p| ["from", "to"].contains(&p.name.as_str()))
            .collect();
        assert_eq!(steps.len(), 2);
        for p in steps {
            let Some(RefOr::T(Schema::Object(o))) = &p.schema else {
                panic!("{} has no schema", p.name)
            };
            let max = match o.maximum {
                Some(utoipa::Number::Int(i)) => i as i64,
                Some(utoipa::Number::UInt(u)) => u as i64,
                _ => panic!("{}: no whole-number maximum", p.name),
            };
            assert_eq!(max, MAX_STEP, "{}", p.name);
        }
    }

    #[derive(Debug, Deserialize, utoipa::IntoParams)]
    struct Flagged {
        #[serde(default, deserialize_with = "super::flag")]
        on: Option<bool>,
    }

    /// Also holds serde's names of the sorts to their `as_str`, which the runs page offers.
    #[test]
    fn an_unknown_name_is_refused_with_the_names_there_are() {
        use crate::http::runs::ListRuns;
        use crate::store::RunSort;
        let Err(AppError::InvalidField(e)) = parse_query::<ListRuns>("sort=sideways") else {
            panic!("sideways was accepted")
        };
        assert_eq!(e.field, "sort");
        let names: Vec<_> = RunSort::ALL.iter().map(|s| s.as_str()).collect();
        let wanted = format!("must be one of {}, got \"sideways\"", names.join(", "));
        assert_eq!(e.message, wanted);
    }

    #[test]
    fn flags_read_true_false_1_and_0() {
        let on = |q: &str| parse_query::<Flagged>(q).map(|f| f.on);
        assert_eq!(on("on=true").unwrap(), Some(true));
        assert_eq!(on("on=1").unwrap(), Some(true));
        assert_eq!(on("on=false").unwrap(), Some(false));
        assert_eq!(on("on=0").unwrap(), Some(false));
        assert_eq!(on("").unwrap(), None);
        let Err(AppError::InvalidField(e)) = on("on=maybe") else {
            panic!("maybe was accepted")
        };
        assert_eq!(e.field, "on");
    }
}
