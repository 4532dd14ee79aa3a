//! Where Sluice may send an HTTP request to a URL that a caller or a config supplies
//! (webhooks): never to loopback, private, link-local or other non-public addresses unless
//! an operator allow-lists the exact destination.
//!
//! Two checks, because reqwest resolves names itself and never calls a resolver for an IP
//! literal:
//! - [`OutboundPolicy::check`] on the URL: http(s) only, no userinfo, an IP-literal host
//!   (in any form the URL parser accepts: `2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`, all
//!   normalized by it) must be public.
//! - [`GuardedResolver`], the DNS resolver of the delivery client: every address a name
//!   resolves to must be public, checked at connect time, so a name that resolved to a public
//!   address at submission and to `127.0.0.1` at delivery (DNS rebinding) is still refused.
//!
//! Allow-listed destinations (`host:port`, exact) go through a client with the system
//! resolver; everything else through the guarded one. Neither client follows redirects or
//! uses a proxy from the environment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use url::{Host, Url};

/// How long a submission-time DNS lookup may take.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `[webhooks]` outbound settings an operator sets (the ingress and analytics).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Exact destinations opened despite the address checks: `host:port` (`127.0.0.1:9999`,
    /// `[::1]:8080`, `hooks.internal:443`), or `host` for the scheme's default port.
    pub allowed_hosts: Vec<String>,
    /// Refuse `http://` destinations (allow-listed ones included).
    pub https_only: bool,
}

/// Why a destination is refused. The messages go to callers: they never say what a name
/// resolved to (that would map the operator's internal DNS for a tenant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("must be an absolute http or https URL with a host")]
    NotHttp,
    #[error("must be an https URL")]
    NotHttps,
    #[error("must not carry a user name or password")]
    Userinfo,
    #[error("{0} is a loopback, private, link-local or otherwise non-public address")]
    Address(IpAddr),
    #[error(
        "the host resolves to a loopback, private, link-local or otherwise non-public address"
    )]
    ResolvesPrivate,
    #[error("the host does not resolve")]
    Unresolvable,
}

/// A `[webhooks] allowed_hosts` entry that is not `host[:port]`.
#[derive(Debug, thiserror::Error)]
#[error("allowed_hosts entry {0:?} is not host[:port]")]
pub struct BadAllowedHost(pub String);

/// Which client a checked URL goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// An operator allow-listed this exact host and port.
    AllowListed,
    /// Public destinations only: the guarded resolver checks each address.
    Public,
}

#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// `(host as the URL parser normalizes it, port)`.
    allowed: Vec<(String, Option<u16>)>,
    https_only: bool,
    resolver: GuardedResolver,
}

impl OutboundPolicy {
    pub fn new(config: &OutboundConfig) -> Result<OutboundPolicy, BadAllowedHost> {
        let mut allowed = Vec::with_capacity(config.allowed_hosts.len());
        for entry in &config.allowed_hosts {
            let bad = || BadAllowedHost(entry.clone());
            let trimmed = entry.trim();
            if trimmed.is_empty() || trimmed.contains(['/', '@', '?', '#']) {
                return Err(bad());
            }
            // The URL parser normalizes the host exactly as it will normalize webhook URLs.
            let parsed = Url::parse(&format!("http://{trimmed}/")).map_err(|_| bad())?;
            let host = parsed.host_str().ok_or_else(bad)?.to_string();
            allowed.push((host, parsed.port()));
        }
        Ok(OutboundPolicy {
            allowed,
            https_only: config.https_only,
            resolver: GuardedResolver::default(),
        })
    }

    /// The checks that need no DNS: at submission (before [`Self::check_resolved`]) and
    /// again before every delivery.
    pub fn check(&self, url: &str) -> Result<(Url, Route), Refused> {
        let url = Url::parse(url).map_err(|_| Refused::NotHttp)?;
        match url.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            "http" => return Err(Refused::NotHttps),
            _ => return Err(Refused::NotHttp),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::Userinfo);
        }
        let host = url.host_str().ok_or(Refused::NotHttp)?;
        let port = url.port_or_known_default();
        let listed = self
            .allowed
            .iter()
            .any(|(h, p)| h == host && (p.is_none() && url.port().is_none() || *p == port));
        if listed {
            return Ok((url, Route::AllowListed));
        }
        let literal = match url.host() {
            Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(Host::Domain(_)) => None,
            None => return Err(Refused::NotHttp),
        };
        if let Some(ip) = literal {
            if !is_public(ip) {
                return Err(Refused::Address(ip));
            }
        }
        Ok((url, Route::Public))
    }

    /// [`Self::check`], then resolves a name the way delivery will, so a caller learns at
    /// submission that `localhost` or a name pointing inside is refused. Delivery checks
    /// again at connect time: this is for the clear error, not the guarantee.
    pub async fn check_resolved(&self, url: &str) -> Result<(Url, Route), Refused> {
        let (url, route) = self.check(url)?;
        if route == Route::Public {
            if let Some(Host::Domain(name)) = url.host() {
                // Bounded: a caller's slow DNS must not hold its request open.
                let addrs = tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.lookup(name))
                    .await
                    .map_err(|_| Refused::Unresolvable)??;
                if addrs.is_empty() {
                    return Err(Refused::Unresolvable);
                }
            }
        }
        Ok((url, route))
    }

    pub(crate) fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(self.resolver.clone())
    }

    #[cfg(test)]
    pub(crate) fn with_fake_dns(mut self, fake: fn(&str) -> Vec<IpAddr>) -> OutboundPolicy {
        self.resolver.fake = Some(fake);
        self
    }
}

/// A reqwest resolver that refuses a name if any of its addresses is not public.
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver {
    /// Unit tests stand in for DNS (a name that resolves to loopback only on the second
    /// lookup, as in DNS rebinding).
    #[cfg(test)]
    fake: Option<fn(&str) -> Vec<IpAddr>>,
}

impl GuardedResolver {
    /// Every address of `name`, or a refusal if one is not public (a name with one private
    /// address among public ones is refused whole: the connector may pick any).
    pub async fn lookup(&self, name: &str) -> Result<Vec<SocketAddr>, Refused> {
        #[cfg(test)]
        if let Some(fake) = self.fake {
            return guard(fake(name).into_iter().map(|ip| SocketAddr::new(ip, 0)));
        }
        let addrs = tokio::net::lookup_host((name, 0))
            .await
            .map_err(|_| Refused::Unresolvable)?;
        guard(addrs)
    }
}

fn guard(addrs: impl Iterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
    let addrs: Vec<SocketAddr> = addrs.collect();
    if addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(Refused::ResolvesPrivate);
    }
    Ok(addrs)
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            match resolver.lookup(name.as_str()).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(refused) => {
                    tracing::warn!(host = name.as_str(), %refused, "outbound connection refused");
                    Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>)
                }
            }
        })
    }
}

/// True for an error whose cause is a [`Refused`] from the guarded resolver.
pub fn refused_in(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cause = e.source();
    }
    None
}

/// The IPv4 ranges no webhook may reach (IANA special-purpose registry, RFC 6890 and
/// successors), besides what `Ipv4Addr` classifies itself.
const V4_BLOCKED: [(Ipv4Addr, u8); 16] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),          // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),         // RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10),      // CGNAT (RFC 6598)
    (Ipv4Addr::new(127, 0, 0, 0), 8),        // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),     // link-local, cloud metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),      // RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24),       // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),       // documentation
    (Ipv4Addr::new(192, 88, 99, 0), 24),     // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),     // RFC 1918
    (Ipv4Addr::new(198, 18, 0, 0), 15),      // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24),    // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),     // documentation
    (Ipv4Addr::new(224, 0, 0, 0), 4),        // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),        // reserved, broadcast
    (Ipv4Addr::new(255, 255, 255, 255), 32), // broadcast
];

/// IPv6 ranges refused outright. Ranges that embed an IPv4 address (6to4, NAT64) are
/// judged by that address instead; IPv4-mapped and -compatible addresses are refused.
const V6_BLOCKED: [(Ipv6Addr, u8); 13] = [
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96), // unspecified, loopback, v4-compatible
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96), // v4-mapped
    (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96), // v4-translated (RFC 2765)
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments, Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16), // segment routing SIDs
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// Whether a webhook may connect to `ip` without an allow-list entry.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    !V4_BLOCKED
        .iter()
        .any(|(net, len)| Ipv4Net::new(*net, *len).is_ok_and(|n| n.contains(&ip)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // 6to4 (2002::/16) carries an IPv4 address in bits 16..48; NAT64 (64:ff9b::/96) in the
    // last 32 bits: the connection ends up there.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_public_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_public_v4(v4);
    }
    !V6_BLOCKED
        .iter()
        .any(|(net, len)| Ipv6Net::new(*net, *len).is_ok_and(|n| n.contains(&ip)))
}

/// The two delivery clients: allow-listed destinations, and the guarded one for the rest.
/// Neither follows redirects (a 3xx is an answer, not a new destination) or reads proxy
/// settings from the environment.
pub fn clients(
    policy: &OutboundPolicy,
    timeout: std::time::Duration,
) -> Result<(reqwest::Client, reqwest::Client), reqwest::Error> {
    let base = || {
        reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
    };
    let allowed = base().build()?;
    let guarded = base().dns_resolver(policy.resolver()).build()?;
    Ok((allowed, guarded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> OutboundPolicy {
        OutboundPolicy::new(&OutboundConfig::default()).unwrap()
    }

    #[test]
    fn non_public_ip_literals_are_refused_in_every_form_the_parser_accepts() {
        let policy = strict();
        for url in [
            "http://127.0.0.1:18123/?query=CREATE+TABLE+x",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://198.18.0.1/",
            "http://192.0.2.1/",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[fc00::1]/",
            "http://[fd12:3456::1]/",
            "http://[fe80::1]/",
            "http://[ff02::1]/",
            "http://[2001:db8::1]/",
            "http://[2002:7f00:1::]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2001::1]/",
        ] {
            assert!(
                matches!(policy.check(url), Err(Refused::Address(_))),
                "{url}: {:?}",
                policy.check(url)
            );
        }
        for url in [
            "https://93.184.215.14/hook",
            "http://[2606:4700::1111]/",
            "http://[2002:5db8:d70e::1]/",
            "http://[64:ff9b::808:808]/",
            "https://hooks.example.com:8443/x",
        ] {
            assert_eq!(policy.check(url).unwrap().1, Route::Public, "{url}");
        }
    }

    #[test]
    fn schemes_userinfo_and_https_only() {
        let policy = strict();
        assert_eq!(policy.check("ftp://example.com/"), Err(Refused::NotHttp));
        assert_eq!(policy.check("file:///etc/passwd"), Err(Refused::NotHttp));
        assert_eq!(policy.check("/relative"), Err(Refused::NotHttp));
        assert_eq!(
            policy.check("https://user:pw@example.com/"),
            Err(Refused::Userinfo)
        );
        assert_eq!(
            policy.check("https://user@example.com/"),
            Err(Refused::Userinfo)
        );
        // A userinfo trick: the host is evil.example, not 127.0.0.1.
        assert_eq!(
            policy.check("http://127.0.0.1:18123@evil.example/"),
            Err(Refused::Userinfo)
        );
        let https = OutboundPolicy::new(&OutboundConfig {
            https_only: true,
            allowed_hosts: vec!["127.0.0.1:9999".into()],
        })
        .unwrap();
        assert_eq!(https.check("http://example.com/"), Err(Refused::NotHttps));
        assert_eq!(
            https.check("http://127.0.0.1:9999/"),
            Err(Refused::NotHttps)
        );
        assert!(https.check("https://127.0.0.1:9999/").is_ok());
    }

    #[test]
    fn the_allow_list_opens_exact_destinations_only() {
        let policy = OutboundPolicy::new(&OutboundConfig {
            allowed_hosts: vec![
                "127.0.0.1:9999".into(),
                "[::1]:8080".into(),
                "Hooks.Internal".into(),
            ],
            https_only: false,
        })
        .unwrap();
        let route = |u: &str| policy.check(u).map(|(_, r)| r);
        assert_eq!(route("http://127.0.0.1:9999/hook"), Ok(Route::AllowListed));
        assert_eq!(route("http://2130706433:9999/hook"), Ok(Route::AllowListed));
        assert_eq!(route("http://[::1]:8080/"), Ok(Route::AllowListed));
        assert_eq!(route("https://hooks.internal/x"), Ok(Route::AllowListed));
        // Other ports of the same host stay closed.
        assert!(matches!(
            route("http://127.0.0.1:18123/?query=SELECT+1"),
            Err(Refused::Address(_))
        ));
        assert!(matches!(
            route("http://[::1]:8081/"),
            Err(Refused::Address(_))
        ));
        assert_eq!(route("https://hooks.internal:8443/"), Ok(Route::Public));
        for bad in ["", "http://x/", "a/b", "u@h:1", "h:99999"] {
            assert!(
                OutboundPolicy::new(&OutboundConfig {
                    allowed_hosts: vec![bad.into()],
                    https_only: false,
                })
                .is_err(),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn names_that_resolve_to_loopback_are_refused_by_the_resolver() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver::default();
        for name in ["localhost", "localhost."] {
            let outcome = resolver.resolve(name.parse().unwrap()).await;
            let refused = refused_in(outcome.err().unwrap().as_ref());
            assert!(
                matches!(
                    refused,
                    Some(Refused::ResolvesPrivate | Refused::Unresolvable)
                ),
                "{name}: {refused:?}"
            );
        }
        assert_eq!(
            strict().check_resolved("http://localhost:18123/").await,
            Err(Refused::ResolvesPrivate)
        );
    }

    #[tokio::test]
    async fn a_name_with_one_private_address_is_refused_whole() {
        let policy = strict().with_fake_dns(|_| {
            vec![
                IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            ]
        });
        assert_eq!(
            policy.check_resolved("https://mixed.example/").await,
            Err(Refused::ResolvesPrivate)
        );
        let public = strict().with_fake_dns(|_| vec![IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14))]);
        assert!(public
            .check_resolved("https://public.example/")
            .await
            .is_ok());
        let nothing = strict().with_fake_dns(|_| Vec::new());
        assert_eq!(
            nothing.check_resolved("https://nothing.example/").await,
            Err(Refused::Unresolvable)
        );
    }
}
