//! What admission uses of the replica's shared handles. The ingress's `AppState` (a room
//! above) implements it, so admission never names that room: the dependency points down,
//! as `config::Section` does for config.

use std::collections::HashMap;

use rdkafka::producer::FutureProducer;
use sluice_schemas::{ReplyTo, Topics};

use super::tokens::Tokenizer;
use super::{AuditSink, Routing};
use crate::budget::Budgets;
use crate::config::Config;
use crate::guard::Guard;
use crate::keys::KeyStore;
use crate::webhooks::Webhooks;

/// The handles admission validates and publishes with. `Send + Sync + 'static` because a
/// large body is validated on the blocking pool with an `Arc` of them.
pub trait Handles: Send + Sync + 'static {
    fn config(&self) -> &Config;
    fn keys(&self) -> &KeyStore;
    /// Each configured model's tokenizer: the model allow-list and prompt-token counting.
    fn models(&self) -> &HashMap<String, Tokenizer>;
    fn guard(&self) -> &Guard;
    fn budgets(&self) -> &Budgets;
    fn webhooks(&self) -> &Webhooks;
    fn audits(&self) -> &AuditSink;
    fn routing(&self) -> &Routing;
    fn topics(&self) -> &Topics;
    /// Where this replica's sync requests get their answers.
    fn reply_to(&self) -> &ReplyTo;
    fn producer(&self) -> &FutureProducer;
}
