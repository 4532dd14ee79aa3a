//! OpenAI's response JSON, as borrowed serde types: field order is api.openai.com's, and a
//! response is serialized without building a `serde_json::Value` tree.

use serde::Serialize;

use super::{ApiError, MODEL_CREATED};
use crate::mock::reply::{FinishReason, Reply};

pub(super) fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

#[derive(Serialize)]
pub(super) struct ChatCompletionJson<'a> {
    pub(super) id: &'a str,
    pub(super) object: &'static str,
    pub(super) created: u64,
    pub(super) model: &'a str,
    pub(super) choices: [ChoiceJson<'a>; 1],
    pub(super) usage: UsageJson,
    pub(super) service_tier: &'static str,
    pub(super) system_fingerprint: &'static str,
}

#[derive(Serialize)]
pub(super) struct ChoiceJson<'a> {
    pub(super) index: u32,
    pub(super) message: MessageJson<'a>,
    pub(super) logprobs: (),
    pub(super) finish_reason: &'static str,
}

#[derive(Serialize)]
pub(super) struct MessageJson<'a> {
    pub(super) role: &'static str,
    /// `null` when the message is a tool call.
    pub(super) content: Option<&'a str>,
    pub(super) refusal: (),
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tool_calls: Option<[ToolCallJson<'a>; 1]>,
    pub(super) annotations: [(); 0],
}

/// One function call, as a message's `tool_calls` entry or (with `index`) a stream delta's.
#[derive(Serialize)]
pub(super) struct ToolCallJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<&'static str>,
    pub(super) function: FunctionJson<'a>,
}

#[derive(Serialize)]
pub(super) struct FunctionJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<&'a str>,
    pub(super) arguments: &'a str,
}

#[derive(Serialize)]
pub(super) struct ChunkJson<'a> {
    pub(super) id: &'a str,
    pub(super) object: &'static str,
    pub(super) created: u64,
    pub(super) model: &'a str,
    pub(super) service_tier: &'static str,
    pub(super) system_fingerprint: &'static str,
    pub(super) choices: &'a [ChunkChoiceJson<'a>],
    /// Absent without include_usage; `null`, then the usage on the last chunk, with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) usage: Option<Option<UsageJson>>,
}

#[derive(Serialize)]
pub(super) struct ChunkChoiceJson<'a> {
    pub(super) index: u32,
    pub(super) delta: Delta<'a>,
    pub(super) logprobs: (),
    pub(super) finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Delta<'a> {
    Role {
        role: &'static str,
        content: &'static str,
        refusal: (),
    },
    Content {
        content: &'a str,
    },
    ToolCalls {
        tool_calls: [ToolCallJson<'a>; 1],
    },
    Empty {},
}

#[derive(Serialize)]
pub(super) struct UsageJson {
    pub(super) prompt_tokens: u32,
    pub(super) completion_tokens: u32,
    pub(super) total_tokens: u32,
    pub(super) prompt_tokens_details: PromptTokensDetails,
    pub(super) completion_tokens_details: CompletionTokensDetails,
}

impl UsageJson {
    pub(super) fn new(reply: &Reply) -> UsageJson {
        UsageJson {
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
            total_tokens: reply.prompt_tokens.saturating_add(reply.completion_tokens),
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: reply.cached_tokens,
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionTokensDetails::default(),
        }
    }
}

#[derive(Serialize, Default)]
pub(super) struct PromptTokensDetails {
    pub(super) cached_tokens: u32,
    pub(super) audio_tokens: u32,
}

#[derive(Serialize, Default)]
pub(super) struct CompletionTokensDetails {
    pub(super) reasoning_tokens: u32,
    pub(super) audio_tokens: u32,
    pub(super) accepted_prediction_tokens: u32,
    pub(super) rejected_prediction_tokens: u32,
}

#[derive(Serialize)]
pub(super) struct ErrorEnvelope<'a> {
    pub(super) error: &'a ApiError,
}

#[derive(Serialize)]
pub(super) struct ModelJson<'a> {
    pub(super) id: &'a str,
    pub(super) object: &'static str,
    pub(super) created: u64,
    pub(super) owned_by: &'static str,
}

impl<'a> ModelJson<'a> {
    pub(super) fn new(id: &'a str) -> ModelJson<'a> {
        ModelJson {
            id,
            object: "model",
            created: MODEL_CREATED,
            owned_by: "system",
        }
    }
}

#[derive(Serialize)]
pub(super) struct ModelListJson<'a> {
    pub(super) object: &'static str,
    pub(super) data: Vec<ModelJson<'a>>,
}
