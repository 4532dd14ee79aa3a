//! Console logins: a key in, a session cookie out. The admin key logs in with the right to
//! change keys; the console key (`[console] key_sha256`) only reads. A tenant's key is no
//! console key.
//!
//! A session is 256 random bits in an `HttpOnly; SameSite=Strict` cookie scoped to
//! `/console`, held in this replica's memory (a restart logs everyone out). Every change is
//! a POST carrying the session's CSRF token (256 more random bits, compared in constant
//! time); a POST whose `Origin` is another site is refused before that.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use cookie::{Cookie, SameSite};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::keys::auth;

/// The session cookie's name.
pub(super) const COOKIE: &str = "sluice_console";

/// What a login may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The console key: every page, no change.
    Reader,
    /// The admin key: also creates, rotates and revokes keys.
    Admin,
}

impl Role {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "read-only",
            Role::Admin => "admin",
        }
    }
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) role: Role,
    /// The token every form of this session carries.
    pub(super) csrf: String,
    expires: Instant,
    made: Instant,
}

/// The sessions of this replica, bounded.
pub(super) struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
    ttl: Duration,
    max: usize,
    secure: bool,
}

/// 256 bits from the OS CSPRNG, in hex.
fn token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

/// Which role `key` logs in as: the admin key, the console key, or none (compared by
/// digest, in constant time; both are always compared).
pub(super) fn role_of(config: &Config, key: &str) -> Option<Role> {
    let presented = auth::digest(key);
    let matches = |hex_digest: Option<&str>| -> bool {
        let stored = hex_digest
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        stored.is_some_and(|s| bool::from(s.ct_eq(&presented)))
    };
    let admin = matches(config.admin.key_sha256.as_deref());
    let reader = matches(config.console.key_sha256.as_deref());
    if admin {
        Some(Role::Admin)
    } else if reader {
        Some(Role::Reader)
    } else {
        None
    }
}

impl Sessions {
    pub(super) fn new(config: &Config) -> Sessions {
        Sessions {
            by_token: Mutex::new(HashMap::new()),
            ttl: config.console.session_ttl_ms,
            max: config.console.max_sessions,
            secure: config.console.secure_cookie,
        }
    }

    /// A new session for `role`, and the `Set-Cookie` value that carries it.
    pub(super) fn open(&self, role: Role) -> Option<String> {
        let (id, csrf) = (token()?, token()?);
        let now = Instant::now();
        let mut sessions = self.by_token.lock().ok()?;
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= self.max {
            // Full of live logins: the oldest goes.
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.made)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                role,
                csrf,
                expires: now + self.ttl,
                made: now,
            },
        );
        Some(self.cookie(id, self.ttl).to_string())
    }

    fn cookie(&self, value: String, max_age: Duration) -> Cookie<'static> {
        Cookie::build((COOKIE, value))
            .path("/console")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
            ))
            .build()
    }

    /// The `Set-Cookie` value that clears the cookie.
    pub(super) fn cleared(&self) -> String {
        self.cookie(String::new(), Duration::ZERO).to_string()
    }

    /// The session the request's cookie names, if it is live.
    pub(super) fn find(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = session_id(headers)?;
        let now = Instant::now();
        let sessions = self.by_token.lock().ok()?;
        let session = sessions.get(&id).filter(|s| s.expires > now)?.clone();
        Some((id, session))
    }

    pub(super) fn close(&self, id: &str) {
        if let Ok(mut sessions) = self.by_token.lock() {
            sessions.remove(id);
        }
    }
}

/// The session id in the request's `Cookie` header(s).
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
        .filter(|v| v.len() == 64)
}

/// A change may proceed: its form's token is the session's, and it did not come from
/// another site (`Origin`, when the browser sends one, names this host).
pub(super) fn change_allowed(session: &Session, form_token: &str, headers: &HeaderMap) -> bool {
    let same_token = bool::from(session.csrf.as_bytes().ct_eq(form_token.as_bytes()));
    same_token && same_origin(headers)
}

/// `Origin` absent (a same-origin GET-less client) or `http(s)://<Host>`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    bare == Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config() -> Config {
        let mut config: Config = figment::Figment::new()
            .extract()
            .unwrap_or_else(|e| panic!("{e}"));
        config.admin.key_sha256 = Some(auth::hex_digest("admin-secret"));
        config.console.key_sha256 = Some(auth::hex_digest("reader-secret"));
        config.console.max_sessions = 2;
        config
    }

    #[test]
    fn keys_map_to_roles_and_others_to_none() {
        let config = config();
        assert_eq!(role_of(&config, "admin-secret"), Some(Role::Admin));
        assert_eq!(role_of(&config, "reader-secret"), Some(Role::Reader));
        assert_eq!(role_of(&config, "sk-tenant"), None);
        assert_eq!(role_of(&config, ""), None);
    }

    fn with_cookie(set_cookie: &str) -> HeaderMap {
        let pair = set_cookie.split(';').next().unwrap_or_default().to_string();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}")).unwrap_or_else(|e| panic!("{e}")),
        );
        headers
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_bounded_in_number() {
        let sessions = Sessions::new(&config());
        let first = sessions.open(Role::Reader).unwrap_or_default();
        assert!(first.contains("HttpOnly") && first.contains("SameSite=Strict"));
        assert!(first.contains("Path=/console"));
        let (_, found) = sessions
            .find(&with_cookie(&first))
            .unwrap_or_else(|| panic!("no session for {first}"));
        assert_eq!(found.role, Role::Reader);
        let second = sessions.open(Role::Admin).unwrap_or_default();
        let third = sessions.open(Role::Admin).unwrap_or_default();
        // max_sessions = 2: the oldest went.
        assert!(sessions.find(&with_cookie(&first)).is_none());
        assert!(sessions.find(&with_cookie(&second)).is_some());
        assert!(sessions.find(&with_cookie(&third)).is_some());
        let mut forged = HeaderMap::new();
        forged.insert(
            header::COOKIE,
            HeaderValue::from_static("sluice_console=00000000000000000000000000000000"),
        );
        assert!(sessions.find(&forged).is_none());
    }

    #[test]
    fn a_change_needs_the_token_and_this_origin() {
        let sessions = Sessions::new(&config());
        let cookie = sessions.open(Role::Admin).unwrap_or_default();
        let mut headers = with_cookie(&cookie);
        let (_, session) = sessions
            .find(&headers)
            .unwrap_or_else(|| panic!("no session"));
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9400"));
        assert!(change_allowed(&session, &session.csrf, &headers));
        assert!(!change_allowed(&session, "", &headers));
        assert!(!change_allowed(&session, &"0".repeat(64), &headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9400"),
        );
        assert!(change_allowed(&session, &session.csrf, &headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!change_allowed(&session, &session.csrf, &headers));
    }
}
