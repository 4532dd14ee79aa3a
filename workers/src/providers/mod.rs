//! Providers: a closed set, chosen by `type` in config, all behind one trait. Whatever the
//! provider speaks, requests arrive and answers leave in one internal shape: the OpenAI chat
//! completion request, response and `chat.completion.chunk` (what flows through Kafka and
//! back to callers). Each provider module holds its config and HTTP calls; the bodies are
//! translated to and from its wire format by `sluice_dialect`.

pub mod anthropic;
pub mod azure;
mod client;
mod config;
pub mod gemini;
mod http;
pub mod openai;
pub mod scrub;

pub use client::{Client, Completion, Embedded, EventStream, Provider};
pub(crate) use config::{check_key_env, check_url, key_from_env};
pub use config::{Invalid, ProviderConfig};
pub(crate) use http::{call_json, call_stream, passthrough_error, translate_events};
pub use http::{http_client, with_traceparent};

#[cfg(test)]
mod tests;
