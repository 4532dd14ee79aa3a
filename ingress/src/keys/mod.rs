//! API keys: the key store and authentication of callers ([`auth`]), the admin API that
//! creates, rotates and revokes keys ([`Admin`]; its routes are in the HTTP room), and the keys topic
//! that replicates every change to every replica ([`sync`]).

mod admin;
pub mod auth;
pub(crate) mod sync;

pub(crate) use admin::{authorize as authorize_admin, Admin};
pub(crate) use auth::{Caller, KeyStore};
pub(crate) use sync::{KeyLog, LoadError};
