//! OpenAI's embeddings API (`POST /v1/embeddings`): the request the ingress validates and
//! the workers send, the attribute that marks a [`crate::Request`] record as one, and the
//! bounds every embeddings request is held to.
//!
//! An embeddings request travels the same topics as a chat request: its record's `body` is
//! the [`EmbeddingsRequest`] as JSON, `max_tokens` is 0 (only input is billed) and
//! `attributes[ENDPOINT_ATTRIBUTE]` is [`EMBEDDINGS`], set by the ingress (a caller's own
//! value is never kept).

use serde::{Deserialize, Serialize};

/// Request attribute naming a record's endpoint when it is not chat completions.
pub const ENDPOINT_ATTRIBUTE: &str = "sluice.endpoint";
/// [`ENDPOINT_ATTRIBUTE`]'s value for `/v1/embeddings`.
pub const EMBEDDINGS: &str = "embeddings";

/// The most inputs one request may embed (OpenAI's own limit).
pub const MAX_INPUTS: usize = 2048;
/// The most dimensions a caller may ask for.
pub const MAX_DIMENSIONS: u32 = 16_384;

/// Whether a record's attributes mark it as an embeddings request.
pub fn is_embeddings(attributes: &std::collections::HashMap<String, String>) -> bool {
    attributes
        .get(ENDPOINT_ATTRIBUTE)
        .is_some_and(|v| v == EMBEDDINGS)
}

/// POST /v1/embeddings body. Every field OpenAI defines, and no other: a field Sluice does
/// not know could change what the provider bills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Input,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// What to embed: one text, several, one token array or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenArrays(Vec<Vec<u32>>),
}

impl Input {
    /// How many vectors the answer holds.
    pub fn len(&self) -> usize {
        match self {
            Input::Text(_) | Input::Tokens(_) => 1,
            Input::Texts(t) => t.len(),
            Input::TokenArrays(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The texts, if the input is text.
    pub fn texts(&self) -> Option<Vec<&str>> {
        match self {
            Input::Text(t) => Some(vec![t.as_str()]),
            Input::Texts(t) => Some(t.iter().map(String::as_str).collect()),
            Input::Tokens(_) | Input::TokenArrays(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    /// Each vector as the base64 of its little-endian `f32`s.
    Base64,
}

/// Why an embeddings body is refused: the parameter and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub param: &'static str,
    pub problem: &'static str,
}

/// A field, the shape it must have, and whether a value fits it.
type Shape = (&'static str, &'static str, fn(&serde_json::Value) -> bool);

/// Why a body could not be read as an [`EmbeddingsRequest`].
#[derive(Debug)]
pub enum Unreadable {
    /// A known field has the wrong shape.
    Field(Invalid),
    /// Anything else (an unknown field, a missing one), as serde says it.
    Json(serde_json::Error),
}

impl EmbeddingsRequest {
    /// Reads a body's fields, naming the field at fault when one has the wrong shape (serde's
    /// own message for an untagged `input` names none).
    pub fn from_fields(
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<EmbeddingsRequest, Unreadable> {
        use serde_json::Value;
        let wrong =
            |name: &str, fits: fn(&Value) -> bool| fields.get(name).is_some_and(|v| !fits(v));
        let shapes: [Shape; 5] = [
            ("model", "a string", Value::is_string),
            (
                "input",
                "a string, an array of strings, an array of token ids or an array of token-id arrays",
                |v| Input::deserialize(v).is_ok(),
            ),
            ("encoding_format", "`float` or `base64`", |v| {
                v.is_null() || EncodingFormat::deserialize(v).is_ok()
            }),
            ("dimensions", "an integer from 1 to 16384", |v| {
                v.is_null() || v.as_u64().is_some_and(|d| d <= u64::from(u32::MAX))
            }),
            ("user", "a string", |v| v.is_null() || v.is_string()),
        ];
        if let Some((param, problem, _)) = shapes.iter().find(|(name, _, fits)| wrong(name, *fits))
        {
            return Err(Unreadable::Field(Invalid { param, problem }));
        }
        serde_json::from_value(Value::Object(fields)).map_err(Unreadable::Json)
    }

    /// The bounds beyond the shape: at least one input, none empty, at most
    /// [`MAX_INPUTS`], `dimensions` in 1..=[`MAX_DIMENSIONS`].
    pub fn check(&self) -> Result<(), Invalid> {
        let invalid = |param, problem| Err(Invalid { param, problem });
        if self.model.trim().is_empty() {
            return invalid("model", "a model is required");
        }
        if self.input.is_empty() {
            return invalid("input", "at least one input is required");
        }
        if self.input.len() > MAX_INPUTS {
            return invalid("input", "at most 2048 inputs per request");
        }
        let empty = match &self.input {
            Input::Text(t) => t.is_empty(),
            Input::Texts(t) => t.iter().any(String::is_empty),
            Input::Tokens(t) => t.is_empty(),
            Input::TokenArrays(t) => t.iter().any(Vec::is_empty),
        };
        if empty {
            return invalid("input", "an input may not be empty");
        }
        if let Some(d) = self.dimensions {
            if d == 0 || d > MAX_DIMENSIONS {
                return invalid("dimensions", "an integer from 1 to 16384");
            }
        }
        Ok(())
    }
}

/// The token usage of an embeddings answer (`prompt_tokens` and `total_tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
}

/// The parts of an embeddings answer Sluice reads; the vectors pass through as they came.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsResponse {
    pub data: Vec<serde_json::Value>,
    #[serde(default)]
    pub usage: Option<EmbeddingsUsage>,
}

/// A vector as OpenAI's `base64` encoding gives it: little-endian `f32`s, base64.
pub fn vector_to_base64(values: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<EmbeddingsRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn every_input_shape_openai_defines() {
        let one = parse(r#"{"model": "m", "input": "hi"}"#).unwrap();
        assert_eq!(one.input, Input::Text("hi".into()));
        let many = parse(r#"{"model": "m", "input": ["a", "b"]}"#).unwrap();
        assert_eq!(many.input.len(), 2);
        let tokens = parse(r#"{"model": "m", "input": [1, 2, 3]}"#).unwrap();
        assert_eq!(tokens.input, Input::Tokens(vec![1, 2, 3]));
        let arrays = parse(r#"{"model": "m", "input": [[1], [2, 3]]}"#).unwrap();
        assert_eq!(arrays.input.len(), 2);
        let full = parse(
            r#"{"model": "m", "input": "x", "encoding_format": "base64", "dimensions": 8, "user": "u"}"#,
        )
        .unwrap();
        assert_eq!(full.encoding_format, Some(EncodingFormat::Base64));
        assert!(full.check().is_ok());
    }

    #[test]
    fn a_wrong_shape_names_its_field() {
        let param = |json: serde_json::Value| match EmbeddingsRequest::from_fields(
            json.as_object().unwrap().clone(),
        ) {
            Err(Unreadable::Field(invalid)) => Some(invalid.param),
            Err(Unreadable::Json(_)) => None,
            Ok(_) => Some("ok"),
        };
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": 42})),
            Some("input")
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": [[1, "a"]]})),
            Some("input")
        );
        assert_eq!(
            param(serde_json::json!({"model": 1, "input": "a"})),
            Some("model")
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": "a", "encoding_format": "hex"})),
            Some("encoding_format")
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": "a", "dimensions": -1})),
            Some("dimensions")
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": "a", "dimensions": 5_000_000_000u64})),
            Some("dimensions")
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": "a", "extra": 1})),
            None
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": ["a"], "dimensions": 3})),
            Some("ok")
        );
    }

    #[test]
    fn unknown_fields_and_wrong_shapes_are_refused() {
        assert!(parse(r#"{"model": "m", "input": "x", "service_tier": "flex"}"#).is_err());
        assert!(parse(r#"{"model": "m", "input": [1, "a"]}"#).is_err());
        assert!(parse(r#"{"model": "m", "input": [-1]}"#).is_err());
        assert!(parse(r#"{"model": "m", "input": {"text": "x"}}"#).is_err());
        assert!(parse(r#"{"model": "m", "input": "x", "encoding_format": "int8"}"#).is_err());
        assert!(parse(r#"{"model": "m"}"#).is_err());
    }

    #[test]
    fn bounds() {
        let param = |json: &str| parse(json).unwrap().check().err().map(|e| e.param);
        assert_eq!(param(r#"{"model": "m", "input": []}"#), Some("input"));
        assert_eq!(param(r#"{"model": "m", "input": ""}"#), Some("input"));
        assert_eq!(
            param(r#"{"model": "m", "input": ["a", ""]}"#),
            Some("input")
        );
        assert_eq!(
            param(r#"{"model": "m", "input": [[1], []]}"#),
            Some("input")
        );
        assert_eq!(param(r#"{"model": " ", "input": "a"}"#), Some("model"));
        let dims = |d: u32| {
            param(&format!(
                r#"{{"model": "m", "input": "a", "dimensions": {d}}}"#
            ))
        };
        assert_eq!(dims(0), Some("dimensions"));
        assert_eq!(dims(16_385), Some("dimensions"));
        assert_eq!(dims(16_384), None);
        let many = serde_json::json!({"model": "m", "input": vec!["a"; MAX_INPUTS + 1]});
        let many: EmbeddingsRequest = serde_json::from_value(many).unwrap();
        assert_eq!(many.check().err().map(|e| e.param), Some("input"));
    }

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(vector_to_base64(&[1.0]), "AACAPw==");
        assert_eq!(vector_to_base64(&[]), "");
    }
}
