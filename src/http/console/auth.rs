//! The console's logins: an admin token given once at the login form is kept in the sidecar's
//! memory under a random, opaque login id, and the browser holds only that id, in an
//! `HttpOnly`, `SameSite=Strict` cookie limited to `/console` (`Secure` over HTTPS). Each login
//! has its own CSRF token, which every form of the console carries and every POST is checked
//! against; a login ends at logout or after `console_session_secs`, whichever comes first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use cookie::{Cookie, SameSite};
use rand::RngCore;
use subtle::ConstantTimeEq;

/// The name of the console's cookie.
pub(super) const COOKIE: &str = "forge_console";
/// The path the cookie is sent for.
pub(super) const COOKIE_PATH: &str = "/console";

/// 32 random bytes, hex: a login id or a CSRF token.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The opaque id a browser's cookie holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct LoginId(String);

impl LoginId {
    fn new() -> LoginId {
        LoginId(random_hex())
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The token every form of one login carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CsrfToken(String);

impl CsrfToken {
    fn new() -> CsrfToken {
        CsrfToken(random_hex())
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, compared in constant time.
    pub(super) fn matches(&self, given: &str) -> bool {
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// One login: whose token, its forms' CSRF token, and when it ends.
#[derive(Debug, Clone)]
pub(super) struct Login {
    pub(super) id: LoginId,
    /// `Bearer <admin token>`, as every request of this login carries it.
    pub(super) authorization: String,
    pub(super) csrf: CsrfToken,
    expires: Instant,
}

/// The logins of this sidecar, in memory: a restart, or another sidecar, asks to log in again.
#[derive(Debug, Clone)]
pub(crate) struct Logins {
    map: Arc<Mutex<HashMap<LoginId, Login>>>,
    lifetime: Duration,
}

impl Logins {
    pub(crate) fn new(lifetime: Duration) -> Logins {
        Logins {
            map: Arc::default(),
            lifetime,
        }
    }

    pub(super) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new login for `token`, as of `now`; logins that have ended are dropped.
    pub(super) fn start(&self, token: &str, now: Instant) -> Login {
        let login = Login {
            id: LoginId::new(),
            authorization: format!("Bearer {token}"),
            csrf: CsrfToken::new(),
            expires: now + self.lifetime,
        };
        let mut map = self.map.lock().expect("the logins' lock is never poisoned");
        map.retain(|_, l| l.expires > now);
        map.insert(login.id.clone(), login.clone());
        login
    }

    /// The login of cookie value `id`, if it exists and has not ended at `now`.
    pub(super) fn find(&self, id: &str, now: Instant) -> Option<Login> {
        let mut map = self.map.lock().expect("the logins' lock is never poisoned");
        let key = LoginId(id.to_string());
        match map.get(&key) {
            Some(login) if login.expires > now => Some(login.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the login `id` (logout, or its token no longer valid).
    pub(super) fn end(&self, id: &LoginId) {
        let mut map = self.map.lock().expect("the logins' lock is never poisoned");
        map.remove(id);
    }
}

/// Whether the request came over HTTPS, as far as the sidecar can tell: it serves plain HTTP
/// itself, so only a proxy in front says so (`X-Forwarded-Proto: https`).
pub(super) fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The value of the login cookie the request carries, if any.
pub(super) fn login_cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse(v.to_string()))
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

/// The cookie that holds login `id` for `lifetime`.
pub(super) fn login_cookie(id: &LoginId, lifetime: Duration, secure: bool) -> Cookie<'static> {
    let max_age = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    Cookie::build((COOKIE, id.as_str().to_string()))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build()
}

/// The cookie that clears the login cookie in the browser.
pub(super) fn cleared_cookie(secure: bool) -> Cookie<'static> {
    let mut cookie = login_cookie(&LoginId(String::new()), Duration::ZERO, secure);
    cookie.make_removal();
    cookie
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_found_until_it_ends() {
        let logins = Logins::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let login = logins.start("cf_secret", t0);
        assert_eq!(login.authorization, "Bearer cf_secret");
        let found = logins.find(login.id.as_str(), t0 + Duration::from_secs(59));
        assert_eq!(found.map(|l| l.id), Some(login.id.clone()));
        assert!(logins
            .find(login.id.as_str(), t0 + Duration::from_secs(60))
            .is_none());
        // Gone for good once found ended, even asked about earlier again.
        assert!(logins.find(login.id.as_str(), t0).is_none());
        let other = logins.start("cf_secret", t0);
        assert_ne!(other.id, login.id);
        logins.end(&other.id);
        assert!(logins.find(other.id.as_str(), t0).is_none());
        assert!(logins.find("not-an-id", t0).is_none());
    }

    #[test]
    fn each_login_has_its_own_ids_and_csrf_token() {
        let logins = Logins::new(Duration::from_secs(60));
        let (a, b) = (
            logins.start("t", Instant::now()),
            logins.start("t", Instant::now()),
        );
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, b.csrf);
        assert_eq!(a.id.as_str().len(), 64);
        assert!(a.csrf.matches(a.csrf.as_str()));
        assert!(!a.csrf.matches(b.csrf.as_str()));
        assert!(!a.csrf.matches(""));
        assert!(!a.csrf.matches(&a.csrf.as_str()[..63]));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_https() {
        let id = LoginId::new();
        let text = login_cookie(&id, Duration::from_secs(3600), false).to_string();
        assert!(
            text.starts_with(&format!("{COOKIE}={}", id.as_str())),
            "{text}"
        );
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/console",
            "Max-Age=3600",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(!text.contains("Secure"), "{text}");
        let secure = login_cookie(&id, Duration::from_secs(1), true).to_string();
        assert!(secure.contains("; Secure"), "{secure}");
        let cleared = cleared_cookie(false).to_string();
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        let mut headers = HeaderMap::new();
        let sent = format!("a=b; {COOKIE}={}; c=d", id.as_str());
        headers.insert(axum::http::header::COOKIE, sent.parse().unwrap());
        assert_eq!(login_cookie_value(&headers).as_deref(), Some(id.as_str()));
        assert!(!over_https(&headers));
        headers.insert("x-forwarded-proto", "HTTPS".parse().unwrap());
        assert!(over_https(&headers));
    }
}
