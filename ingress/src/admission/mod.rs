//! Admission: what turns a caller's body into a published request. [`validate`] checks it
//! (options, model, key, guardrails, prompt tokens, size) into an [`Accepted`];
//! [`publish`] reserves its budget and writes it and its `accepted` audit event; every
//! `rejected` audit event is built by [`audit::rejected`]. Batch lines enter through
//! [`validate_line`]; prompt tokens are counted by [`tokens`]. Knows nothing of routes or
//! responses.

mod audit;
mod lines;
mod publish;
mod routing;
pub(crate) mod tokens;
mod validate;

#[cfg(test)]
mod fuzz;

pub(crate) use audit::{event as audit_event, of_caller, AuditSink};
pub(crate) use lines::{validate_line, Line};
pub(crate) use publish::{publish, publish_traced};
pub(crate) use routing::Routing;
pub(crate) use validate::{checked, Dialect, Mode};
