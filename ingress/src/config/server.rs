//! `[server]` and `[listener]`: where and how the HTTP API listens.

use std::time::Duration;

use serde::Deserialize;

use super::millis;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Largest accepted request body (413 beyond, before it is all read). Requests also
    /// have to fit `[kafka] max_message_bytes` once encoded.
    pub max_body_bytes: usize,
    /// How long a sync caller waits for its result before a 504 (the request still runs).
    #[serde(with = "millis")]
    pub sync_timeout_ms: Duration,
    /// The reply partition this replica listens on (give each replica its own).
    pub reply_partition: i32,
    /// Name of this replica in logs and audit.
    pub instance_id: String,
    /// Most request headers accepted (431 beyond). hyper refuses more than 100 before
    /// this check runs.
    pub max_header_count: usize,
    /// Largest total size of request header names and values (431 beyond). hyper refuses
    /// a request head over ~400 KiB before this check runs.
    pub max_header_bytes: usize,
    /// The ingress's address as callers see it (`https://api.example.com`), for absolute
    /// URLs it returns (Anthropic's `results_url`); none: from the `Host` header
    /// (src/public_url.rs).
    pub public_base_url: Option<String>,
    /// Take the scheme of returned URLs from `X-Forwarded-Proto` (only behind a proxy that
    /// sets it; otherwise a caller could name any scheme).
    pub trust_forwarded_proto: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            sync_timeout_ms: Duration::from_secs(120),
            reply_partition: 0,
            instance_id: "ingress-0".into(),
            max_header_count: 64,
            max_header_bytes: 16 * 1024,
            public_base_url: None,
            trust_forwarded_proto: false,
        }
    }
}

/// `[listener]`: connection and read limits of the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Most client connections open at once; more wait in the kernel's accept backlog until
    /// one closes. Keep it below the process's file-descriptor limit (`ulimit -n`) minus
    /// what Kafka and ClickHouse clients use.
    pub max_connections: usize,
    /// Time a client has to send a whole request head (request line and headers). The same
    /// timer runs while a keep-alive connection waits for its next request, so it is also
    /// the idle timeout: a connection that sends nothing for this long is closed.
    #[serde(with = "millis")]
    pub header_read_timeout_ms: Duration,
    /// Time a client has to send a whole JSON body (408 beyond, connection closed). On the
    /// streamed uploads (`POST /v1/files`, `POST /v1/messages/batches`) it bounds the wait
    /// for each next chunk instead.
    #[serde(with = "millis")]
    pub body_read_timeout_ms: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 4096,
            header_read_timeout_ms: Duration::from_secs(10),
            body_read_timeout_ms: Duration::from_secs(30),
        }
    }
}
