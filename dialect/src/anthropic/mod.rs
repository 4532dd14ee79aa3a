//! Anthropic's Messages API and the internal OpenAI shape, both ways. The ingress serves
//! `/v1/messages` with the `to_openai` of requests and the `from_openai` of answers, stream
//! chunks and errors; the workers call Anthropic as a provider with the inverses.

pub mod error;
pub mod request;
pub mod response;
pub mod stream;

pub use request::{MessagesRequest, Outgoing, RequestError};

#[cfg(test)]
mod tests;
