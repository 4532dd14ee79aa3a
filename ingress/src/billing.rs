//! What a request may make a provider bill, bounded before it is published: `n` is capped,
//! a completion cap is always set (the caller's, else the one reserved, forwarded to the
//! provider as `max_completion_tokens`), and fields billed at prices Sluice does not know
//! are refused ([`sluice_schemas::billable`]). The reservation (docs/budgets.md) is then
//! `prompt x input price + n x cap x output price`, which is all the provider can bill.

use serde_json::Value;
use sluice_schemas::billable::Refused;
use sluice_schemas::openai::{ChatCompletionRequest, MessageContent};

pub use crate::config::BillingConfig;
use crate::error::ApiError;

/// Why a request was refused before it was published.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("Invalid value for `n`: expected an integer from 1 to {max}")]
    TooManyChoices { max: u32 },
    #[error("Unsupported parameter: {0}")]
    Field(Refused),
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::TooManyChoices { max } => ApiError::TooManyChoices { max },
            Refusal::Field(refused) => ApiError::UnsupportedField(refused),
        }
    }
}

/// Bounds `request`'s cost; returns the completion tokens the provider may bill for it
/// (`n` x the completion cap), which the request record carries as its `max_tokens`.
/// `default_cap` is set as `max_completion_tokens` when the caller sets no cap.
pub fn bound(
    request: &mut ChatCompletionRequest,
    config: &BillingConfig,
    default_cap: u32,
) -> Result<u64, Refusal> {
    let n = match request.extra.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= u64::from(config.max_n) => n,
            _ => {
                return Err(Refusal::TooManyChoices { max: config.max_n });
            }
        },
    };
    let cap = match request.completion_cap() {
        Some(cap) => cap,
        None => {
            // Without a cap the provider may answer up to the model's context: reserve a
            // cap and hold the provider to it.
            request.max_completion_tokens = Some(default_cap);
            default_cap
        }
    };
    // The typed fields (model, messages, stream, caps) are allowed; the rest is `extra`.
    sluice_schemas::billable::check(&request.extra).map_err(Refusal::Field)?;
    for (i, message) in request.messages.iter().enumerate() {
        let Some(MessageContent::Parts(parts)) = &message.content else {
            continue;
        };
        for (j, part) in parts.iter().enumerate() {
            if let Some(problem) = sluice_schemas::billable::refused_part(&part.kind) {
                return Err(Refusal::Field(Refused {
                    param: sluice_schemas::billable::part_param(i, j),
                    problem,
                }));
            }
        }
    }
    Ok(n.saturating_mul(u64::from(cap)))
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    fn request(v: Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn n_is_capped_and_multiplies_the_cap() {
        let config = BillingConfig::default();
        let base = |extra: Value| {
            let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            request(v)
        };
        assert_eq!(
            bound(&mut base(json!({"n": 3, "max_tokens": 10})), &config, 100).unwrap(),
            30
        );
        assert_eq!(
            bound(&mut base(json!({"max_completion_tokens": 7})), &config, 100).unwrap(),
            7
        );
        for n in [
            json!(0),
            json!(9),
            json!(128),
            json!(-1),
            json!(1.5),
            json!("2"),
        ] {
            let err = bound(&mut base(json!({"n": n})), &config, 100).unwrap_err();
            assert!(matches!(err, Refusal::TooManyChoices { max: 8 }), "{n}");
        }
        // No cap: the default is reserved and forwarded.
        let mut r = base(json!({"n": 2}));
        assert_eq!(bound(&mut r, &config, 100).unwrap(), 200);
        assert_eq!(r.max_completion_tokens, Some(100));
        assert_eq!(
            serde_json::to_value(&r).unwrap()["max_completion_tokens"],
            100
        );
        // A caller's cap is kept as given.
        let mut r = base(json!({"max_tokens": 5}));
        bound(&mut r, &config, 100).unwrap();
        assert_eq!((r.max_tokens, r.max_completion_tokens), (Some(5), None));
        let err = bound(&mut base(json!({"service_tier": "priority"})), &config, 100).unwrap_err();
        assert!(err.to_string().contains("service_tier"), "{err}");
        let mut audio = base(json!({}));
        audio.messages = serde_json::from_value(json!([{"role": "user", "content": [
            {"type": "text", "text": "listen"}, {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]))
        .unwrap();
        let Err(Refusal::Field(refused)) = bound(&mut audio, &config, 100) else {
            panic!("audio input passed");
        };
        assert_eq!(refused.param, "messages[0].content[1].type");
    }
}
