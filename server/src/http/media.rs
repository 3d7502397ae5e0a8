//! Request body types, read from `Content-Type` by their essence (`application/json;
//! charset=utf-8` is JSON, `application/jsonx` is not).

use axum::http::{HeaderMap, header};

use crate::error::AppError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaType {
    Json,
    /// Rule files.
    Toml,
    /// The dashboard's forms.
    Form,
    Other(String),
    Missing,
}

impl MediaType {
    pub fn of(headers: &HeaderMap) -> Self {
        let Some(value) = headers.get(header::CONTENT_TYPE) else {
            return Self::Missing;
        };
        let raw = value.to_str().unwrap_or("(not text)");
        let essence = raw.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json" => Self::Json,
            "application/toml" => Self::Toml,
            "application/x-www-form-urlencoded" => Self::Form,
            _ => Self::Other(raw.to_owned()),
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Json => "application/json",
            Self::Toml => "application/toml",
            Self::Form => "application/x-www-form-urlencoded",
            Self::Other(raw) => raw,
            Self::Missing => "missing",
        }
    }

    /// Refuses with 415 unless the type is one of `wanted`, naming what was sent and what to send.
    pub fn require_one_of(&self, wanted: &[Self]) -> Result<(), AppError> {
        if wanted.contains(self) {
            return Ok(());
        }
        let names: Vec<&str> = wanted.iter().map(Self::name).collect();
        let sent = match self {
            Self::Missing => "Content-Type is missing".to_owned(),
            other => format!("Content-Type is {:?}", other.name()),
        };
        Err(AppError::UnsupportedMediaType(format!(
            "{sent}; send {}",
            names.join(" or ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn of(ct: &'static str) -> MediaType {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        MediaType::of(&h)
    }

    #[test]
    fn types_are_read_by_essence() {
        assert_eq!(of("application/json"), MediaType::Json);
        assert_eq!(of("Application/JSON; charset=utf-8"), MediaType::Json);
        assert_eq!(
            of("application/jsonx"),
            MediaType::Other("application/jsonx".into())
        );
        assert_eq!(of("text/plain"), MediaType::Other("text/plain".into()));
        assert_eq!(MediaType::of(&HeaderMap::new()), MediaType::Missing);
        let e = MediaType::Missing
            .require_one_of(&[MediaType::Json])
            .unwrap_err();
        assert!(
            e.to_string().contains("missing; send application/json"),
            "{e}"
        );
    }
}
