//! One registry's HTTP client: scheme and TLS chosen once, authentication driven by
//! challenges, retries with backoff, and redirects followed without credentials when they
//! leave the registry's host.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use ureq::http::{self, Response};

use super::auth::{self, AuthState};
use super::credentials::{self, Credentials};
use super::{certs, RegistryError, RegistryOptions};

pub type Resp = Response<ureq::Body>;

/// A request body.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A stream of exactly this many bytes; a request with one is sent once (no retry
    /// inside the client: the caller re-opens the stream and tries again).
    Stream(&'a mut (dyn Read + Send), u64),
}

/// How many times a request is tried (408, 429, 5xx and dropped connections are retried).
pub const ATTEMPTS: u32 = 5;

pub struct Client {
    /// The registry as named in references (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// `https://host[:port]` or `http://…`.
    base: String,
    agent: ureq::Agent,
    creds: Option<Credentials>,
    auth: Mutex<AuthState>,
    scopes: Mutex<Vec<String>>,
}

/// Whether `host[:port]` names this machine's loopback (where plain http is allowed).
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry
            .rsplit_once(':')
            .map_or(registry, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { registry })
    };
    host == "localhost" || host == "::1" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.octets()[0] == 127)
}

fn api_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

fn transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

fn retry_after(r: &Resp) -> Option<Duration> {
    let v = r.headers().get("retry-after")?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s.min(60)))
}

pub fn backoff(attempt: u32, hint: Option<Duration>) -> Duration {
    hint.unwrap_or_else(|| Duration::from_millis(250u64 << attempt.min(6))).min(Duration::from_secs(30))
}

pub fn header(r: &Resp, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Reads at most `max` bytes of a response body; more is an error.
pub fn read_body(r: &mut Resp, max: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
    let mut buf = Vec::new();
    r.body_mut()
        .as_reader()
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| RegistryError::Protocol(format!("{what}: reading the response: {e}")))?;
    if buf.len() as u64 > max {
        return Err(RegistryError::Protocol(format!("{what}: the response is larger than {max} bytes")));
    }
    Ok(buf)
}

/// The registry's error message from a failed response (distribution's JSON errors).
pub fn error_message(r: &mut Resp) -> String {
    let body = read_body(r, 64 << 10, "error").unwrap_or_default();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
        if let Some(errs) = v.get("errors").and_then(|e| e.as_array()) {
            let parts: Vec<String> = errs
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                    let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                    format!("{code}: {msg}")
                })
                .collect();
            if !parts.is_empty() {
                return parts.join("; ");
            }
        }
    }
    String::from_utf8_lossy(&body).trim().chars().take(300).collect()
}

fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

impl Client {
    /// Connects to `registry`: picks https (or http on loopback, or with `--tls-verify=false`,
    /// when https does not answer), learns how it wants to be authenticated, and asks for
    /// tokens with `scopes`.
    pub fn new(registry: &str, opts: &RegistryOptions, scopes: Vec<String>) -> Result<Client, RegistryError> {
        let creds = credentials::lookup(registry, opts.auth_file.as_deref())?;
        Self::with_credentials(registry, opts, scopes, creds)
    }

    pub fn with_credentials(
        registry: &str,
        opts: &RegistryOptions,
        scopes: Vec<String>,
        creds: Option<Credentials>,
    ) -> Result<Client, RegistryError> {
        let tls = certs::tls_config(registry, opts.tls_verify)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("imgforge/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .tls_config(tls)
            .build()
            .into();
        let host = api_host(registry);
        let mut client = Client {
            registry: registry.to_string(),
            base: format!("https://{host}"),
            agent,
            creds,
            auth: Mutex::new(AuthState::None),
            scopes: Mutex::new(auth::merge_scopes(&scopes)),
        };
        let ping = match client.ping() {
            Ok(r) => r,
            Err(e) if is_loopback(registry) || !opts.tls_verify => {
                // Plain http, if a registry answers there; otherwise the https error is the
                // one worth reporting (a certificate problem, say).
                client.base = format!("http://{host}");
                match client.ping() {
                    Ok(r) if matches!(r.status().as_u16(), 200 | 401) => r,
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let status = ping.status().as_u16();
        match status {
            200..=299 => {}
            401 => {
                let c = header(&ping, "www-authenticate").and_then(|h| auth::parse_challenge(&h));
                *client.auth.lock().expect("lock") = c.map(|c| AuthState::from_challenge(&c)).unwrap_or_default();
            }
            _ => {
                return Err(RegistryError::Protocol(format!(
                    "{registry} does not look like a registry: GET /v2/ answered {status}"
                )))
            }
        }
        Ok(client)
    }

    fn ping(&self) -> Result<Resp, RegistryError> {
        let url = format!("{}/v2/", self.base);
        let mut last = None;
        for attempt in 0..3 {
            match self.agent.get(&url).call() {
                Ok(r) if transient(r.status().as_u16()) => {
                    std::thread::sleep(backoff(attempt, retry_after(&r)));
                    last = Some(RegistryError::Status {
                        registry: self.registry.clone(),
                        what: "GET /v2/".into(),
                        status: r.status().as_u16(),
                        message: String::new(),
                    });
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    let err = RegistryError::Http { registry: self.registry.clone(), what: url.clone(), source: e };
                    // A refused connection or a TLS mismatch will not change on retry.
                    if attempt == 0 && url.starts_with("https://") && is_loopback(&self.registry) {
                        return Err(err);
                    }
                    last = Some(err);
                    std::thread::sleep(backoff(attempt, None));
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Resolves a `Location` header (absolute, or relative to the registry).
    pub fn resolve_location(&self, loc: &str) -> String {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else if loc.starts_with('/') {
            format!("{}{loc}", self.base)
        } else {
            format!("{}/{loc}", self.base)
        }
    }

    pub fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    /// Adds scopes (e.g. pull on a repository to mount from); the next token asks for them.
    pub fn add_scopes(&self, more: &[String]) {
        let mut s = self.scopes.lock().expect("lock");
        let mut all = s.clone();
        all.extend_from_slice(more);
        let merged = auth::merge_scopes(&all);
        if merged != *s {
            *s = merged;
            if let AuthState::Bearer { token, .. } = &mut *self.auth.lock().expect("lock") {
                *token = None;
            }
        }
    }

    fn basic(&self) -> Option<String> {
        self.creds.as_ref().map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.secret))
            )
        })
    }

    /// The Authorization header for the registry's host, fetching a token if needed.
    fn authorization(&self) -> Result<Option<String>, RegistryError> {
        let mut state = self.auth.lock().expect("lock");
        match &mut *state {
            AuthState::None => Ok(None),
            AuthState::Basic => Ok(self.basic()),
            AuthState::Bearer { realm, service, token } => {
                if let Some((t, until)) = token {
                    if Instant::now() + auth::RENEW_MARGIN < *until {
                        return Ok(Some(format!("Bearer {t}")));
                    }
                }
                let scopes = self.scopes.lock().expect("lock").clone();
                let (t, lifetime) = self.fetch_token(realm, service.as_deref(), &scopes)?;
                *token = Some((t.clone(), Instant::now() + Duration::from_secs(lifetime)));
                Ok(Some(format!("Bearer {t}")))
            }
        }
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(String, u64), RegistryError> {
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(RegistryError::Protocol(format!(
                "{}: token realm {realm:?} is not an http(s) URL",
                self.registry
            )));
        }
        let mut last = None;
        // An identity token (`identitytoken` in an auth file) is an OAuth2 refresh token: it is
        // exchanged with a POST, never sent as a password.
        let refresh = self.creds.as_ref().filter(|c| c.username == "<token>").map(|c| c.secret.clone());
        for attempt in 0..ATTEMPTS {
            let result = match &refresh {
                Some(rt) => {
                    let scope = scopes.join(" ");
                    let mut form = vec![
                        ("grant_type", "refresh_token"),
                        ("client_id", "imgforge"),
                        ("refresh_token", rt.as_str()),
                        ("scope", scope.as_str()),
                    ];
                    if let Some(s) = service {
                        form.push(("service", s));
                    }
                    self.agent.post(realm).send_form(form)
                }
                None => {
                    let mut req = self.agent.get(realm);
                    if let Some(s) = service {
                        req = req.query("service", s);
                    }
                    for s in scopes {
                        req = req.query("scope", s);
                    }
                    if let Some(b) = self.basic() {
                        req = req.header("authorization", b);
                    }
                    req.call()
                }
            };
            let mut r = match result {
                Ok(r) => r,
                Err(e) => {
                    last = Some(RegistryError::Http {
                        registry: self.registry.clone(),
                        what: format!("token from {realm}"),
                        source: e,
                    });
                    std::thread::sleep(backoff(attempt, None));
                    continue;
                }
            };
            let status = r.status().as_u16();
            if transient(status) {
                std::thread::sleep(backoff(attempt, retry_after(&r)));
                last = Some(RegistryError::Status {
                    registry: self.registry.clone(),
                    what: format!("token from {realm}"),
                    status,
                    message: error_message(&mut r),
                });
                continue;
            }
            if status == 401 || status == 403 {
                return Err(self.unauthorized(status, &scopes.join(" ")));
            }
            if status != 200 {
                return Err(RegistryError::Status {
                    registry: self.registry.clone(),
                    what: format!("token from {realm}"),
                    status,
                    message: error_message(&mut r),
                });
            }
            let body = read_body(&mut r, 1 << 20, "token response")?;
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
                RegistryError::Protocol(format!("{}: the token server at {realm} did not answer JSON", self.registry))
            })?;
            let token = v
                .get("token")
                .or_else(|| v.get("access_token"))
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    RegistryError::Protocol(format!("{}: the token server at {realm} gave no token", self.registry))
                })?;
            let lifetime = v
                .get("expires_in")
                .and_then(|e| e.as_u64())
                .unwrap_or(auth::DEFAULT_TOKEN_LIFETIME)
                .max(auth::DEFAULT_TOKEN_LIFETIME);
            return Ok((token.to_string(), lifetime));
        }
        Err(last.expect("at least one attempt"))
    }

    pub fn unauthorized(&self, status: u16, what: &str) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            what: what.to_string(),
            status,
            hint: match &self.creds {
                Some(c) => format!(
                    "the credentials for {} from {} were refused; run `imgforge login {}` again",
                    c.username, c.from, self.registry
                ),
                None => format!("run `imgforge login {}`", self.registry),
            },
        }
    }

    fn send_once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &mut Body<'_>,
        auth: Option<&str>,
    ) -> Result<Resp, ureq::Error> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        match body {
            Body::Empty => {
                if matches!(method, "PUT" | "POST" | "PATCH") {
                    b = b.header("content-length", "0");
                }
                self.agent.run(b.body(ureq::SendBody::none()).map_err(ureq::Error::Http)?)
            }
            Body::Bytes(bytes) => {
                b = b.header("content-length", bytes.len().to_string());
                self.agent.run(b.body(*bytes).map_err(ureq::Error::Http)?)
            }
            Body::Stream(r, len) => {
                b = b.header("content-length", len.to_string());
                let mut limited = (&mut **r).take(*len);
                self.agent.run(b.body(ureq::SendBody::from_reader(&mut limited)).map_err(ureq::Error::Http)?)
            }
        }
    }

    /// Sends a request to the registry: authenticates as challenged, retries transient
    /// failures (except with a stream body), follows redirects for GET and HEAD, sending the
    /// Authorization header only to the registry's own origin. `what` names the operation
    /// in errors (`GET manifest app:1`).
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        mut body: Body<'_>,
        what: &str,
    ) -> Result<Resp, RegistryError> {
        let replayable = !matches!(body, Body::Stream(..));
        let mut reauthed = false;
        let mut attempt = 0;
        loop {
            let authz = self.authorization()?;
            let mut url = url.to_string();
            let mut redirects = 0;
            let result = loop {
                let same_origin = origin(&url) == self.base;
                let a = if same_origin { authz.as_deref() } else { None };
                let r = self.send_once(method, &url, headers, &mut body, a);
                match r {
                    Ok(r)
                        if matches!(method, "GET" | "HEAD")
                            && matches!(r.status().as_u16(), 301 | 302 | 303 | 307 | 308)
                            && redirects < 5 =>
                    {
                        let Some(loc) = header(&r, "location") else { break Ok(r) };
                        url = if loc.starts_with("http://") || loc.starts_with("https://") {
                            loc
                        } else if loc.starts_with('/') {
                            format!("{}{loc}", origin(&url))
                        } else {
                            break Ok(r);
                        };
                        redirects += 1;
                    }
                    other => break other,
                }
            };
            attempt += 1;
            match result {
                Ok(mut r) => {
                    let status = r.status().as_u16();
                    if status == 401 && !reauthed && replayable {
                        reauthed = true;
                        if let Some(c) = header(&r, "www-authenticate").and_then(|h| auth::parse_challenge(&h)) {
                            if let Some(s) = c.params.get("scope") {
                                self.add_scopes(&s.split(' ').map(str::to_string).collect::<Vec<_>>());
                            }
                            let mut st = self.auth.lock().expect("lock");
                            let fresh = AuthState::from_challenge(&c);
                            *st = fresh;
                        }
                        continue;
                    }
                    if status == 401 || status == 403 {
                        let _ = error_message(&mut r);
                        return Err(self.unauthorized(status, what));
                    }
                    if transient(status) && replayable && attempt < ATTEMPTS {
                        let wait = backoff(attempt - 1, retry_after(&r));
                        let _ = error_message(&mut r);
                        std::thread::sleep(wait);
                        continue;
                    }
                    return Ok(r);
                }
                Err(e) => {
                    let retryable = matches!(
                        e,
                        ureq::Error::Io(_)
                            | ureq::Error::Timeout(_)
                            | ureq::Error::ConnectionFailed
                            | ureq::Error::Protocol(_)
                    );
                    if retryable && replayable && attempt < ATTEMPTS {
                        std::thread::sleep(backoff(attempt - 1, None));
                        continue;
                    }
                    return Err(RegistryError::Http {
                        registry: self.registry.clone(),
                        what: what.to_string(),
                        source: e,
                    });
                }
            }
        }
    }

    /// An error for an unexpected status.
    pub fn status_error(&self, mut r: Resp, what: &str) -> RegistryError {
        RegistryError::Status {
            registry: self.registry.clone(),
            what: what.to_string(),
            status: r.status().as_u16(),
            message: error_message(&mut r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "localhost:5000", "127.0.0.1", "127.0.0.1:5000", "127.3.4.5:1", "[::1]:5000"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "128.0.0.1", "localhost.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
        assert_eq!(origin("https://a.example:5000/v2/x?y"), "https://a.example:5000");
        assert_eq!(backoff(10, None), Duration::from_secs(16));
        assert_eq!(backoff(0, Some(Duration::from_secs(3))), Duration::from_secs(3));
    }
}
