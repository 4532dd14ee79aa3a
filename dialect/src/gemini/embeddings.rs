//! Embeddings: an OpenAI embeddings request as Gemini's `embedContent` (one input) or
//! `batchEmbedContents` (several) body ([`from_openai`]), and Gemini's answer as OpenAI's
//! ([`to_openai`]). `dimensions` is `outputDimensionality`; a `base64` answer is encoded
//! here (Gemini answers floats). Gemini reports no token usage: the answer's usage is the
//! caller's count, which the worker marks as estimated.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_schemas::embeddings::{vector_to_base64, EmbeddingsRequest, EncodingFormat, Input};

/// Gemini embeds text only.
pub const TOKENS_UNSUPPORTED: &str = "Gemini embeds text, not token arrays; send the input as text";

/// The method to call (`embedContent` or `batchEmbedContents`) and its body, for `model`
/// (Gemini's name, without `models/`). Token-array input has no Gemini form.
pub fn from_openai(
    request: &EmbeddingsRequest,
    model: &str,
) -> Result<(&'static str, Map<String, Value>), &'static str> {
    let texts = request.input.texts().ok_or(TOKENS_UNSUPPORTED)?;
    let one = |text: &str| {
        let mut body = Map::new();
        body.insert("model".into(), json!(format!("models/{model}")));
        body.insert("content".into(), json!({"parts": [{"text": text}]}));
        if let Some(d) = request.dimensions {
            body.insert("outputDimensionality".into(), json!(d));
        }
        body
    };
    Ok(match (&request.input, texts.as_slice()) {
        (Input::Text(_), [text]) => ("embedContent", one(text)),
        _ => {
            let requests: Vec<Value> = texts.iter().map(|t| Value::Object(one(t))).collect();
            let mut body = Map::new();
            body.insert("requests".into(), Value::Array(requests));
            ("batchEmbedContents", body)
        }
    })
}

#[derive(Deserialize)]
struct Embedding {
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct Answer {
    /// `embedContent`'s.
    embedding: Option<Embedding>,
    /// `batchEmbedContents`'s.
    #[serde(default)]
    embeddings: Vec<Embedding>,
}

/// Gemini's answer as OpenAI's `{"object": "list", "data": [...], "model", "usage"}`, the
/// vectors in the caller's encoding; `prompt_tokens` is the caller's count.
pub fn to_openai(
    answer: &str,
    request: &EmbeddingsRequest,
    model: &str,
    prompt_tokens: u32,
) -> Result<String, serde_json::Error> {
    let answer: Answer = serde_json::from_str(answer)?;
    let vectors = match answer.embedding {
        Some(one) => vec![one],
        None => answer.embeddings,
    };
    if vectors.len() != request.input.len() {
        return Err(serde::de::Error::custom(format!(
            "Gemini answered {} embeddings for {} inputs",
            vectors.len(),
            request.input.len()
        )));
    }
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                json!(vector_to_base64(&v.values))
            } else {
                json!(v.values)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    serde_json::to_string(&json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: Value) -> EmbeddingsRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn one_text_is_embed_content_several_are_a_batch() {
        let one = request(json!({"model": "m", "input": "hello", "dimensions": 8}));
        let (method, body) = from_openai(&one, "gemini-embedding-001").unwrap();
        assert_eq!(method, "embedContent");
        assert_eq!(
            Value::Object(body),
            json!({"model": "models/gemini-embedding-001",
                   "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 8})
        );
        let many = request(json!({"model": "m", "input": ["a", "b"]}));
        let (method, body) = from_openai(&many, "g").unwrap();
        assert_eq!(method, "batchEmbedContents");
        assert_eq!(body["requests"][1]["content"]["parts"][0]["text"], "b");
        assert_eq!(body["requests"][0]["model"], "models/g");
        assert!(body["requests"][0].get("outputDimensionality").is_none());
        // One text in an array is still a batch: the answer keeps the caller's shape.
        let listed = request(json!({"model": "m", "input": ["a"]}));
        assert_eq!(from_openai(&listed, "g").unwrap().0, "batchEmbedContents");
    }

    #[test]
    fn token_arrays_have_no_gemini_form() {
        let tokens = request(json!({"model": "m", "input": [1, 2]}));
        assert_eq!(from_openai(&tokens, "g").unwrap_err(), TOKENS_UNSUPPORTED);
    }

    #[test]
    fn answers_in_openais_shape_float_or_base64() {
        let many = request(json!({"model": "m", "input": ["a", "b"]}));
        let answer = r#"{"embeddings": [{"values": [1.0, 0.5]}, {"values": [0.0, -1.0]}]}"#;
        let out: Value = serde_json::from_str(&to_openai(answer, &many, "m", 7).unwrap()).unwrap();
        assert_eq!(out["object"], "list");
        assert_eq!(out["data"][1]["index"], 1);
        assert_eq!(out["data"][1]["embedding"], json!([0.0, -1.0]));
        assert_eq!(out["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));

        let one = request(json!({"model": "m", "input": "a", "encoding_format": "base64"}));
        let out: Value = serde_json::from_str(
            &to_openai(r#"{"embedding": {"values": [1.0]}}"#, &one, "m", 1).unwrap(),
        )
        .unwrap();
        assert_eq!(out["data"][0]["embedding"], "AACAPw==");
    }

    #[test]
    fn a_wrong_count_of_vectors_is_malformed() {
        let many = request(json!({"model": "m", "input": ["a", "b"]}));
        assert!(to_openai(r#"{"embeddings": [{"values": [1.0]}]}"#, &many, "m", 1).is_err());
        assert!(to_openai(r#"{"candidates": []}"#, &many, "m", 1).is_err());
    }
}
