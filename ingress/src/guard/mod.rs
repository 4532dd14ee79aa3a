//! Guardrails, applied at the ingress to every endpoint's messages before anything is
//! published (chat completions sync and streaming, `/v1/requests`, `/v1/messages`), and
//! to sync answers on the way back. In order:
//!
//! 1. [`prompt_guard`]: the team's deny patterns (with allow exceptions) and the built-in
//!    prompt-injection heuristics, over the caller's text; a match blocks (400
//!    `prompt_blocked`, audit reason = rule id).
//! 2. [`pii`]: PII and secrets in the caller's text are allowed, redacted, masked (with
//!    restoration in sync answers, [`restore`]) or block the request, per category.
//! 3. [`templates`]: a named template's messages, rendered with the (already redacted)
//!    variables, go before the caller's messages.
//! 4. Decorators: the team's system messages, first and last.
//! 5. [`moderation`]: the external classifier sees the final messages (what the provider
//!    will see) before the request is published, and completions before the caller does.
//!
//! Text from config (templates, decorators) is trusted and not scanned; text from the
//! caller (messages of every role, tool-call arguments, template variables) is.

mod input;
pub mod moderation;
mod output;
pub mod pii;
mod policy;
pub mod prompt_guard;
pub mod restore;
pub mod templates;

pub use crate::config::guard as config;
pub use input::{Asked, Guard};
pub use output::{completion_texts, Output, StreamOutput};
pub use policy::Policy;

#[cfg(test)]
mod tests;
