//! OpenAI's Responses API (`POST /v1/responses`) in its stateless form and the internal
//! chat shape: the ingress serves it with [`request::to_openai`] and answers with
//! [`response::from_openai`] and the [`stream::FromOpenAi`] events. The inverses
//! ([`request::from_openai`], [`response::to_openai`], [`stream::ToOpenAi`]) are the
//! workers': an OpenAI deployment that speaks the Responses API (`api = "responses"`) is
//! called at `/v1/responses` for every request routed to it. Errors are OpenAI's error
//! shape, as on chat completions.

pub mod request;
pub mod response;
pub mod stream;

#[cfg(test)]
mod tests;
