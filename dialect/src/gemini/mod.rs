//! Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`, `embedContent`,
//! `batchEmbedContents`) and the internal
//! OpenAI shape: requests from OpenAI's, answers, stream events and errors to OpenAI's.

pub mod embeddings;
pub mod error;
pub mod request;
pub mod response;
pub mod stream;

#[cfg(test)]
mod tests;
