//! Embeddings as OpenAI (`POST /v1/embeddings`, Azure's deployment path) and Gemini
//! (`embedContent`, `batchEmbedContents`) answer them. The vectors are deterministic, so
//! tests can compute them: [`vector`] of the input's text (a token array's ids joined by
//! spaces), unit length, [`DEFAULT_DIMENSIONS`] long unless the request asks for fewer or
//! more. Tokens = words of a text ([`super::reply::count_words`]), ids of a token array.

use base64::Engine as _;
use serde_json::{json, Value};

use super::reply::count_words;

/// A vector's length when the request names none (real models answer 1536 or 3072; tests
/// need less).
pub const DEFAULT_DIMENSIONS: usize = 16;

/// The mock's embedding of `text`: `dimensions` values from an FNV-1a hash of the text,
/// scaled to unit length.
pub fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let raw: Vec<f32> = (0..dimensions)
        .map(|_| {
            // xorshift64: spread the hash over the dimensions.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    raw.into_iter().map(|v| v / norm).collect()
}

/// One input of an OpenAI embeddings request: its text for [`vector`], and its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub text: String,
    pub tokens: u32,
}

/// What the mock answers to a valid OpenAI embeddings request: the body and its
/// prompt tokens. `Err` is the offending parameter and OpenAI's message for it.
pub fn openai_answer(body: &Value) -> Result<(Value, u32), (String, String)> {
    let bad = |param: &str, message: String| Err((param.to_string(), message));
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return bad("model", "you must provide a model parameter".into());
    };
    let inputs = match openai_inputs(body.get("input")) {
        Some(inputs) if !inputs.is_empty() && inputs.iter().all(|i| i.tokens > 0) => inputs,
        _ => return bad("input", "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.".into()),
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(d) => match d.as_u64().filter(|d| (1..=16_384).contains(d)) {
            Some(d) => d as usize,
            None => {
                return bad(
                    "dimensions",
                    format!(
                        "Invalid value for 'dimensions' = {d}. Must be an integer from 1 to 16384."
                    ),
                )
            }
        },
    };
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None => false,
        Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return bad(
                "encoding_format",
                format!("Invalid value: '{other}'. Supported values are: 'float' and 'base64'."),
            )
        }
    };
    let tokens = inputs.iter().map(|i| i.tokens).fold(0, u32::saturating_add);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let v = vector(&input.text, dimensions);
            let embedding = if base64 {
                json!(to_base64(&v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let answer = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok((answer, tokens))
}

/// A string, strings, a token array or token arrays; `None` for anything else.
pub fn openai_inputs(input: Option<&Value>) -> Option<Vec<Embedded>> {
    let text = |t: &str| Embedded {
        text: t.to_string(),
        tokens: count_words(t),
    };
    let ids = |ids: &[Value]| -> Option<Embedded> {
        let ids: Option<Vec<u64>> = ids.iter().map(Value::as_u64).collect();
        let ids = ids?;
        Some(Embedded {
            text: ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
            tokens: ids.len() as u32,
        })
    };
    match input? {
        Value::String(t) => Some(vec![text(t)]),
        Value::Array(items) if items.first().is_some_and(Value::is_u64) => Some(vec![ids(items)?]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(t) => Some(text(t)),
                Value::Array(a) => ids(a),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The base64 of a vector's little-endian `f32`s, as OpenAI encodes it.
pub fn to_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What Gemini answers to `embedContent` (one `content`) or `batchEmbedContents`
/// (`requests`, each naming `models/{model}`): the body and its tokens. `Err` is Google's
/// 400 message.
pub fn gemini_answer(method: &str, model: &str, body: &Value) -> Result<(Value, u32), String> {
    let one = |request: &Value| -> Result<(Value, u32), String> {
        let text: Vec<&str> = request
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|p| p.get("text")?.as_str())
                    .collect()
            })
            .unwrap_or_default();
        if text.is_empty() {
            return Err("* EmbedContentRequest.content: contents is not specified\n".into());
        }
        let text = text.join(" ");
        let dimensions = request
            .get("outputDimensionality")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_DIMENSIONS, |d| d as usize);
        Ok((
            json!({"values": vector(&text, dimensions)}),
            count_words(&text),
        ))
    };
    match method {
        "embedContent" => {
            let (embedding, tokens) = one(body)?;
            Ok((json!({"embedding": embedding}), tokens))
        }
        _ => {
            let Some(requests) = body.get("requests").and_then(Value::as_array) else {
                return Err(
                    "* BatchEmbedContentsRequest.requests: requests is not specified\n".into(),
                );
            };
            let wanted = format!("models/{model}");
            let mut embeddings = Vec::with_capacity(requests.len());
            let mut tokens = 0u32;
            for (i, request) in requests.iter().enumerate() {
                if request.get("model").and_then(Value::as_str) != Some(wanted.as_str()) {
                    return Err(format!(
                        "* BatchEmbedContentsRequest.requests[{i}].model: model must be {wanted}\n"
                    ));
                }
                let (embedding, n) = one(request)?;
                embeddings.push(embedding);
                tokens = tokens.saturating_add(n);
            }
            Ok((json!({"embeddings": embeddings}), tokens))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_length_and_differ_by_text() {
        let a = vector("hello world", 16);
        assert_eq!(a, vector("hello world", 16));
        assert_ne!(a, vector("hello there", 16));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(vector("x", 3).len(), 3);
    }

    #[test]
    fn openai_inputs_in_every_shape_and_bad_ones() {
        let (answer, tokens) =
            openai_answer(&json!({"model": "e", "input": ["a b", "c"], "dimensions": 4})).unwrap();
        assert_eq!(tokens, 3);
        assert_eq!(answer["data"][1]["embedding"], json!(vector("c", 4)));
        let (_, tokens) = openai_answer(&json!({"model": "e", "input": [[1, 2], [3]]})).unwrap();
        assert_eq!(tokens, 3);
        let (answer, _) =
            openai_answer(&json!({"model": "e", "input": "a", "encoding_format": "base64"}))
                .unwrap();
        assert_eq!(
            answer["data"][0]["embedding"],
            json!(to_base64(&vector("a", 16)))
        );
        for bad in [
            json!([]),
            json!(""),
            json!([1, "a"]),
            json!({"a": 1}),
            json!([""]),
        ] {
            let err = openai_answer(&json!({"model": "e", "input": bad})).unwrap_err();
            assert_eq!(err.0, "input");
        }
        let err = openai_answer(&json!({"model": "e", "input": "a", "dimensions": 0})).unwrap_err();
        assert_eq!(err.0, "dimensions");
    }

    #[test]
    fn gemini_batches_name_the_model() {
        let body = json!({"requests": [
            {"model": "models/g", "content": {"parts": [{"text": "a b"}]}, "outputDimensionality": 2},
            {"model": "models/g", "content": {"parts": [{"text": "c"}]}}]});
        let (answer, tokens) = gemini_answer("batchEmbedContents", "g", &body).unwrap();
        assert_eq!(tokens, 3);
        assert_eq!(answer["embeddings"][0]["values"], json!(vector("a b", 2)));
        assert!(gemini_answer("batchEmbedContents", "other", &body).is_err());
    }
}
