//! The HTTP room, the only one that routes: the router, one handler file per API family
//! (chat, async requests, models, budgets, Anthropic messages, admin keys; batches
//! mount their own), SSE streaming, and rendering in the caller's dialect. Handlers
//! authenticate (keys), admit (admission) and answer; they hold no pipeline logic.

mod admin;
pub(crate) mod anthropic;
mod budgets;
mod cached;
mod cancel;
pub(crate) mod chat;
mod conversation;
mod idempotent;
mod models;
pub(crate) mod render;
mod replay;
mod requests;
pub(crate) mod responses;
mod router;
mod sse;

pub(crate) use render::REQUEST_ID_HEADER;
pub(crate) use router::router;
