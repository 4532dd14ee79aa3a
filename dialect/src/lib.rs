//! Sluice's dialects: pure translation between the internal shape (OpenAI's chat
//! completions, what flows through Kafka) and the other APIs Sluice speaks. No I/O: bytes
//! and JSON in, bytes and JSON out.
//!
//! - [`anthropic`]: Anthropic's Messages API, both ways. The ingress takes Anthropic
//!   requests and answers in Anthropic's shapes; the workers call Anthropic as a provider.
//! - [`gemini`]: Google's Gemini API, as a provider (OpenAI -> Gemini requests, Gemini
//!   answers, streams and errors -> OpenAI).
//! - [`openai`]: reading and writing the internal shape, what the others share.
//! - [`responses`]: OpenAI's Responses API (stateless), served by the ingress.
//!
//! Each dialect has `request`, `response`, `stream` and `error` modules; in each, a
//! direction sits beside its inverse (`to_openai` / `from_openai`, `ToOpenAi` /
//! `FromOpenAi`).

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod responses;

pub use openai::{Completion, StreamItem, StreamToOpenAi};
