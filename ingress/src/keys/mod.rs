//! API keys: the key store and authentication of callers ([`auth`]), the admin API that
//! creates, rotates and revokes keys ([`admin`], mounted by the router), and the keys topic
//! that replicates every change to every replica ([`sync`]).

mod admin;
pub mod auth;
pub(crate) mod sync;

pub(crate) use admin::{authorize as authorize_admin, routes as admin_routes};
pub(crate) use auth::{Caller, KeyStore};
pub(crate) use sync::{KeyLog, LoadError};
