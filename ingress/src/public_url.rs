//! The ingress's address as its callers see it, for absolute URLs it hands out (Anthropic's
//! batch `results_url`).
//!
//! In order of trust:
//! 1. `[server] public_base_url` (`https://api.example.com`): used as is; the caller's
//!    `Host` and `X-Forwarded-*` headers are ignored. The setting for production.
//! 2. `[server] trust_forwarded_proto = true` (behind a TLS-terminating proxy that sets
//!    `X-Forwarded-Proto`): that header's scheme (`http` or `https` only) with the `Host`.
//! 3. Otherwise the scheme the ingress itself serves (plain HTTP: it has no TLS listener)
//!    with the `Host`. A client-sent `X-Forwarded-Proto` is ignored: without a proxy the
//!    caller could name any scheme.
//!
//! A `Host` that is not a plain authority (`host[:port]`) becomes `localhost`.

use std::str::FromStr;

use axum::http::uri::Authority;
use axum::http::{header, HeaderMap};

use crate::config::{Config, Section, ServerConfig};
use crate::error::ConfigError;

/// `public_base_url`, when set, must be a base for the URLs this module makes.
impl Section for ServerConfig {
    fn check(&self, _: &Config) -> Result<(), ConfigError> {
        match &self.public_base_url {
            Some(base) if !valid_base(base) => Err(ConfigError::Field {
                field: "server.public_base_url".into(),
                problem: "must be an absolute http(s) URL without userinfo, query or fragment",
            }),
            _ => Ok(()),
        }
    }
}

const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Checks `public_base_url`: an absolute http(s) URL without userinfo, query or fragment.
pub fn valid_base(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
    })
}

/// `scheme://host[:port][/prefix]`, without a trailing `/`.
pub fn base_url(server: &ServerConfig, headers: &HeaderMap) -> String {
    if let Some(base) = &server.public_base_url {
        return base.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| Authority::from_str(h).is_ok_and(|a| a.as_str() == *h && !h.contains('@')))
        .unwrap_or("localhost");
    let forwarded = server
        .trust_forwarded_proto
        .then(|| headers.get(FORWARDED_PROTO))
        .flatten()
        .and_then(|v| v.to_str().ok())
        // A chain of proxies appends: the first is what the caller used.
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v == "http" || v == "https");
    let scheme = forwarded.as_deref().unwrap_or("http");
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_scheme_comes_from_config_or_a_trusted_proxy_never_from_the_caller_alone() {
        let mut server = ServerConfig::default();
        let https = headers(&[("host", "gw.example:8443"), ("x-forwarded-proto", "https")]);
        // Untrusted: the header is ignored, the ingress's own scheme is used.
        assert_eq!(base_url(&server, &https), "http://gw.example:8443");
        server.trust_forwarded_proto = true;
        assert_eq!(base_url(&server, &https), "https://gw.example:8443");
        let chain = headers(&[("host", "gw"), ("x-forwarded-proto", "HTTPS, http")]);
        assert_eq!(base_url(&server, &chain), "https://gw");
        let bogus = headers(&[("host", "gw"), ("x-forwarded-proto", "javascript")]);
        assert_eq!(base_url(&server, &bogus), "http://gw");
        let evil_host = headers(&[("host", "a@evil.example"), ("x-forwarded-proto", "https")]);
        assert_eq!(base_url(&server, &evil_host), "https://localhost");
        let path_host = headers(&[("host", "evil.example/x?")]);
        assert_eq!(base_url(&server, &path_host), "http://localhost");
        // The configured base wins over every header.
        server.public_base_url = Some("https://api.example.com/sluice/".into());
        assert_eq!(base_url(&server, &bogus), "https://api.example.com/sluice");
        assert!(valid_base("https://api.example.com"));
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://u:p@x",
            "https://x/?a=1",
            "https://x/#f",
        ] {
            assert!(!valid_base(bad), "{bad}");
        }
    }
}
