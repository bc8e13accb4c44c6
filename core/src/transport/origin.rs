//! `server.allowed_origins`: which web origins may open sockets (`/ws`, `/graphql`) and call
//! `/graphql` and `/api/*` from a page (CORS, preflight included).
//!
//! A request without an `Origin` header does not come from a browser page (a service, a native
//! app, curl) and is not checked: this guards users' browsers, it is not authentication. Every
//! door authenticates with a bearer token or an API key, never a cookie, so a page on another
//! origin cannot act with a visitor's ambient credentials; that is why the default admits any
//! origin. Operators who want only their own apps list them.

use salvo::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use salvo::http::{HeaderValue, Method, StatusCode};
use salvo::prelude::*;

use super::render_error;
use crate::protocol::{ErrorCode, WireError};

/// How long a browser may cache a preflight answer, seconds.
const PREFLIGHT_MAX_AGE_SECS: &str = "600";
/// Request headers a page may send: the bearer token, JSON bodies, the service API key.
const ALLOWED_REQUEST_HEADERS: &str = "authorization, content-type, x-api-key";
const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";

/// The parsed `server.allowed_origins` list.
#[derive(Debug, Clone)]
pub struct AllowedOrigins {
    /// `"*"` is in the list.
    any: bool,
    /// Exact origins, lowercased: `https://app.example.com`, `http://localhost:3000`.
    exact: Vec<String>,
    /// Wildcard subdomains as (`https://`, `.example.com`) from `https://*.example.com`.
    subdomains: Vec<(String, String)>,
}

impl AllowedOrigins {
    /// Builds the policy from entries already checked by [`check_origin_entry`].
    pub fn new(entries: &[String]) -> AllowedOrigins {
        let mut allowed = AllowedOrigins {
            any: false,
            exact: Vec::new(),
            subdomains: Vec::new(),
        };
        for entry in entries {
            let entry = entry.to_ascii_lowercase();
            if entry == "*" {
                allowed.any = true;
            } else if let Some((scheme, host)) = entry.split_once("://*.") {
                allowed
                    .subdomains
                    .push((format!("{scheme}://"), format!(".{host}")));
            } else {
                allowed.exact.push(entry);
            }
        }
        allowed
    }

    /// Whether a page on `origin` (an `Origin` header's value) may use the server.
    pub fn admits(&self, origin: &str) -> bool {
        if self.any {
            return true;
        }
        let origin = origin.to_ascii_lowercase();
        self.exact.contains(&origin)
            || self.subdomains.iter().any(|(scheme, suffix)| {
                origin
                    .strip_prefix(scheme.as_str())
                    .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix))
            })
    }

    /// `Ok` when the request has no `Origin` or an admitted one, else the coded refusal.
    pub fn check(&self, req: &Request) -> Result<(), WireError> {
        match req.headers().get(ORIGIN) {
            None => Ok(()),
            Some(origin) if origin.to_str().is_ok_and(|origin| self.admits(origin)) => Ok(()),
            Some(origin) => Err(WireError::new(
                ErrorCode::OriginForbidden,
                format!(
                    "origin `{}` is not in server.allowed_origins",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            )),
        }
    }
}

/// Checks one `server.allowed_origins` entry: `*`, or `scheme://host[:port]` with no path, where
/// the host may start with `*.` for any subdomain. The message says what is wrong.
pub fn check_origin_entry(entry: &str) -> Result<(), String> {
    if entry == "*" {
        return Ok(());
    }
    let Some((scheme, authority)) = entry.split_once("://") else {
        return Err(format!(
            "`{entry}` is not an origin like `https://app.example.com`"
        ));
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+')
    {
        return Err(format!("`{entry}`: bad scheme"));
    }
    let host = authority.strip_prefix("*.").unwrap_or(authority);
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !valid_host {
        return Err(format!(
            "`{entry}`: an origin has no path, query or trailing slash"
        ));
    }
    Ok(())
}

/// The CORS hoop for `/graphql` and `/api/*`: refuses pages from other origins with
/// `origin_forbidden` (403), answers preflights, and marks admitted responses readable by the page.
#[derive(Clone)]
pub struct Cors {
    allowed: std::sync::Arc<AllowedOrigins>,
}

impl Cors {
    pub fn new(allowed: std::sync::Arc<AllowedOrigins>) -> Cors {
        Cors { allowed }
    }

    /// The `Access-Control-Allow-Origin` value: `*` when any origin is admitted (shared caches
    /// can keep one answer), else the page's own origin.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.allowed.any {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }
}

#[async_trait]
impl Handler for Cors {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let Some(origin) = req.headers().get(ORIGIN).cloned() else {
            ctrl.call_next(req, depot, res).await;
            return;
        };
        if let Err(error) = self.allowed.check(req) {
            render_error(res, &error);
            ctrl.skip_rest();
            return;
        }
        let headers = res.headers_mut();
        headers.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(&origin),
        );
        headers.append(VARY, HeaderValue::from_static("Origin"));
        let preflight = req.method() == Method::OPTIONS
            && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            headers.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOWED_METHODS),
            );
            headers.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOWED_REQUEST_HEADERS),
            );
            headers.insert(
                ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS),
            );
            res.status_code(StatusCode::NO_CONTENT);
            ctrl.skip_rest();
            return;
        }
        ctrl.call_next(req, depot, res).await;
    }
}

/// `OPTIONS` on a CORS route without a preflight's headers: nothing to say.
pub struct NoContent;

#[async_trait]
impl Handler for NoContent {
    async fn handle(
        &self,
        _req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        res.status_code(StatusCode::NO_CONTENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> AllowedOrigins {
        AllowedOrigins::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn star_admits_every_origin() {
        assert!(policy(&["*"]).admits("https://evil.example"));
    }

    #[test]
    fn exact_entries_admit_only_themselves_ignoring_case() {
        let allowed = policy(&["https://app.example.com", "http://localhost:3000"]);
        assert!(allowed.admits("https://APP.example.com"));
        assert!(allowed.admits("http://localhost:3000"));
        assert!(!allowed.admits("http://app.example.com"));
        assert!(!allowed.admits("https://app.example.com.evil.io"));
        assert!(!allowed.admits("http://localhost:3001"));
    }

    #[test]
    fn wildcard_entries_admit_subdomains_but_not_the_bare_domain_or_lookalikes() {
        let allowed = policy(&["https://*.example.com"]);
        assert!(allowed.admits("https://a.example.com"));
        assert!(allowed.admits("https://a.b.example.com"));
        assert!(!allowed.admits("https://example.com"));
        assert!(!allowed.admits("https://badexample.com"));
        assert!(!allowed.admits("http://a.example.com"));
    }

    #[test]
    fn entries_are_checked() {
        assert!(check_origin_entry("*").is_ok());
        assert!(check_origin_entry("https://app.example.com").is_ok());
        assert!(check_origin_entry("http://127.0.0.1:8080").is_ok());
        assert!(check_origin_entry("https://*.example.com").is_ok());
        assert!(check_origin_entry("app.example.com").is_err());
        assert!(check_origin_entry("https://app.example.com/").is_err());
        assert!(check_origin_entry("https://").is_err());
    }
}
