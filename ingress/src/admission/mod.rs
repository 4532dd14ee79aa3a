//! Admission: what turns a caller's body into a published request. [`validate`] checks it
//! (options, model, key, guardrails, prompt tokens, size) into an [`Accepted`];
//! [`publish`] reserves its budget and writes it and its `accepted` audit event; every
//! `rejected` audit event is built by [`audit::rejected`]. Batch lines enter through
//! [`validate_line`]; prompt tokens are counted by [`tokens`]. Knows nothing of routes or
//! responses, nor of the ingress's state: it works on the [`Handles`] trait, which that
//! state implements.

mod audit;
mod embeddings;
mod handles;
mod lines;
mod publish;
mod routing;
mod shadow;
pub(crate) mod tokens;
mod validate;

pub(crate) use audit::{event as audit_event, of_caller, AuditSink};
pub use handles::Handles;
pub(crate) use lines::{validate_line, Line};
pub(crate) use publish::{publish, publish_traced};
pub(crate) use routing::Routing;
pub(crate) use validate::{checked, Accepted, Dialect, Mode, PRIORITY_HEADER, TIMEOUT_HEADER};
#[cfg(test)]
pub(crate) use validate::{from_anthropic, validate};
