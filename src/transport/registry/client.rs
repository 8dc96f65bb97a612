//! One registry's HTTP client: scheme and TLS chosen once, authentication driven by
//! challenges, retries with backoff, and redirects followed without credentials when they
//! leave the registry's host.

use std::io::{self, Read};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use ureq::http::{self, Response};

use super::auth::{self, AuthState};
use super::credentials::{self, Credentials};
use super::{certs, Limits, RegistryError, RegistryOptions};

pub type Resp = Response<ureq::Body>;

/// A request body.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A stream of exactly this many bytes; a request with one is sent once (no retry
    /// inside the client: the caller re-opens the stream and tries again).
    Stream(&'a mut (dyn Read + Send), u64),
}

pub struct Client {
    /// The registry as named in references (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// `https://host[:port]` or `http://…`.
    base: String,
    agent: ureq::Agent,
    creds: Option<Credentials>,
    auth: Mutex<AuthState>,
    scopes: Mutex<Vec<String>>,
    limits: Limits,
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

/// A body (read from or sent to a registry) that must keep moving: a read that brings
/// less than `min_rate` bytes/s over `slow_time`, or that times out, fails with an error
/// that names the registry and says what was slow.
pub struct Paced<R> {
    inner: R,
    registry: String,
    direction: &'static str,
    limits: Limits,
    window_start: Instant,
    window_bytes: u64,
}

impl<R> Paced<R> {
    pub fn new(inner: R, registry: &str, direction: &'static str, limits: Limits) -> Self {
        Paced {
            inner,
            registry: registry.to_string(),
            direction,
            limits,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    fn slow(&self, detail: String) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, format!("{} {} {detail}", self.registry, self.direction))
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut || is_ureq_timeout(&e) => {
                return Err(self.slow(format!(
                    "nothing for {} s: giving up (IMGFORGE_REGISTRY_SLOW_TIME sets the limit)",
                    self.limits.slow_time.as_secs_f64()
                )))
            }
            Err(e) => return Err(e),
        };
        self.window_bytes += n as u64;
        let elapsed = self.window_start.elapsed();
        if n > 0 && elapsed >= self.limits.slow_time {
            let floor = (self.limits.min_rate as f64 * elapsed.as_secs_f64()) as u64;
            if self.window_bytes < floor {
                return Err(self.slow(format!(
                    "only {} bytes in {:.0} s, under the minimum of {} bytes/s: giving up \
                     (IMGFORGE_REGISTRY_MIN_RATE and IMGFORGE_REGISTRY_SLOW_TIME set the limit)",
                    self.window_bytes,
                    elapsed.as_secs_f64(),
                    self.limits.min_rate
                )));
            }
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        Ok(n)
    }
}

fn is_ureq_timeout(e: &io::Error) -> bool {
    e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()).is_some_and(|u| matches!(u, ureq::Error::Timeout(_)))
}

/// The registry's error message from a failed response's body (distribution's JSON errors).
fn error_text(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
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
    String::from_utf8_lossy(body).trim().chars().take(300).collect()
}

/// The origin of an absolute http(s) URL, `scheme://host:port` in lowercase with the
/// default port made explicit; `None` for anything else, including a URL with user info
/// (`http://a@b/`), which is never treated as any registry's origin.
pub fn origin_of(url: &str) -> Option<String> {
    let u: http::Uri = url.parse().ok()?;
    let scheme = u.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = u.authority()?;
    let host = authority.host();
    if authority.as_str().contains('@') || host.is_empty() {
        return None;
    }
    // After the host: nothing, or `:` and a port number (http::Uri lets `host:junk` and
    // `[::1]junk` through, with no port).
    let port = match authority.as_str().strip_prefix(host)? {
        "" => default_port,
        rest => {
            let digits = rest.strip_prefix(':')?;
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse::<u16>().ok().filter(|p| *p != 0)?
        }
    };
    Some(format!("{scheme}://{}:{port}", host.to_ascii_lowercase()))
}

/// Whether two URLs have the same origin (and both have one).
pub fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin_of(a), origin_of(b)), (Some(x), Some(y)) if x == y)
}

/// `host[:port]` of a URL, for messages.
fn host_of(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| url.chars().take(100).collect())
}

/// Where a redirect from `current` to `location` leads: an absolute http(s) URL, a
/// scheme-relative `//host/path`, or an absolute path on `current`'s origin. `None` for
/// anything else (relative paths, other schemes, URLs that do not parse).
pub fn resolve_redirect(current: &str, location: &str) -> Option<String> {
    let cur: http::Uri = current.parse().ok()?;
    let next = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{}://{rest}", cur.scheme_str()?)
    } else if location.starts_with('/') {
        format!("{}://{}{location}", cur.scheme_str()?, cur.authority()?)
    } else {
        return None;
    };
    origin_of(&next)?;
    Some(next)
}

impl Client {
    /// A response body, paced (see [`Paced`]).
    pub fn body<'r>(&self, r: &'r mut Resp) -> Paced<ureq::BodyReader<'r>> {
        Paced::new(r.body_mut().as_reader(), &self.registry, "sent", self.limits)
    }

    /// A response body as an owned reader, paced.
    pub fn into_body(&self, r: Resp) -> Paced<ureq::BodyReader<'static>> {
        Paced::new(r.into_body().into_reader(), &self.registry, "sent", self.limits)
    }

    /// Reads at most `max` bytes of a response body; more is an error.
    pub fn read_body(&self, r: &mut Resp, max: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
        let mut buf = Vec::new();
        self.body(r).take(max + 1).read_to_end(&mut buf).map_err(|e| self.io_error(what, e))?;
        if buf.len() as u64 > max {
            return Err(RegistryError::Protocol(format!("{what}: the response is larger than {max} bytes")));
        }
        Ok(buf)
    }

    /// An error reading or sending a body: too slow (from [`Paced`]), or cut off.
    pub fn io_error(&self, what: &str, e: io::Error) -> RegistryError {
        if e.kind() == io::ErrorKind::TimedOut {
            let t = e.to_string();
            let detail = t.strip_prefix(&self.registry).map_or(t.clone(), |r| r.trim_start().to_string());
            return RegistryError::Slow { registry: self.registry.clone(), what: what.to_string(), detail };
        }
        RegistryError::Protocol(format!("{what}: reading the response from {}: {e}", self.registry))
    }

    /// The registry's error message from a failed response (distribution's JSON errors).
    pub fn error_message(&self, r: &mut Resp) -> String {
        error_text(&self.read_body(r, 64 << 10, "error").unwrap_or_default())
    }

    /// An error for a failed exchange; timeouts say what took too long.
    fn http_error(&self, what: &str, e: ureq::Error) -> RegistryError {
        let l = &self.limits;
        let detail = match &e {
            ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => format!(
                "could not be connected to within {} s (IMGFORGE_REGISTRY_CONNECT_TIMEOUT sets the limit)",
                l.connect.as_secs_f64()
            ),
            ureq::Error::Timeout(_) => format!(
                "accepted the request but did not answer within {} s (IMGFORGE_REGISTRY_RESPONSE_TIMEOUT sets the limit)",
                l.response.as_secs_f64()
            ),
            ureq::Error::Io(io) if io.kind() == io::ErrorKind::TimedOut => return self.io_error(what, io::Error::new(io.kind(), io.to_string())),
            _ => return RegistryError::Http { registry: self.registry.clone(), what: what.to_string(), source: e },
        };
        RegistryError::Slow { registry: self.registry.clone(), what: what.to_string(), detail }
    }

    /// How many times a request is tried.
    pub fn attempts(&self) -> u32 {
        self.limits.attempts
    }

    /// Whether a request first tried at `started` may be tried again after `tries` tries.
    pub fn may_retry(&self, tries: u32, started: Instant) -> bool {
        tries < self.limits.attempts && started.elapsed() < self.limits.retry_time
    }

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
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("imgforge/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(opts.limits.connect))
            .timeout_send_request(Some(opts.limits.slow_time))
            .timeout_recv_response(Some(opts.limits.response))
            .timeout_per_read(Some(opts.limits.slow_time))
            .timeout_per_write(Some(opts.limits.slow_time));
        let agent = match certs::tls_config(registry, opts.tls_verify)? {
            certs::Tls::Verify(tls) => ureq::Agent::with_parts(
                config.build(),
                certs::connector(tls),
                ureq::unversioned::resolver::DefaultResolver::default(),
            ),
            certs::Tls::NoVerify(tls) => config.tls_config(tls).build().into(),
        };
        let host = api_host(registry);
        let mut client = Client {
            registry: registry.to_string(),
            base: format!("https://{host}"),
            agent,
            creds,
            auth: Mutex::new(AuthState::None),
            limits: opts.limits,
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
                    // It took plain-http connections but never answered: say so.
                    Err(slow @ RegistryError::Slow { .. }) => return Err(slow),
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
        for attempt in 0..self.limits.attempts.min(3) {
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
                    let err = self.http_error(&format!("GET {url}"), e);
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
        let started = Instant::now();
        for attempt in 0..self.limits.attempts {
            if attempt > 0 && !self.may_retry(attempt, started) {
                break;
            }
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
                    last = Some(self.http_error(&format!("token from {realm}"), e));
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
                    message: self.error_message(&mut r),
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
                    message: self.error_message(&mut r),
                });
            }
            let body = self.read_body(&mut r, 1 << 20, &format!("token from {realm}"))?;
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
                // The registry must keep taking the body at the minimum rate.
                let mut limited = Paced::new((&mut **r).take(*len), &self.registry, "took", self.limits);
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
        let started = Instant::now();
        loop {
            let authz = self.authorization()?;
            let mut url = url.to_string();
            let mut redirects = 0;
            let result = loop {
                // Credentials (Basic, or a token the registry's challenge led to) go to the
                // registry's own origin only: never to where a redirect leads.
                let a = if same_origin(&url, &self.base) { authz.as_deref() } else { None };
                let r = self.send_once(method, &url, headers, &mut body, a);
                match r {
                    Ok(r)
                        if matches!(method, "GET" | "HEAD")
                            && matches!(r.status().as_u16(), 301 | 302 | 303 | 307 | 308)
                            && redirects < 5 =>
                    {
                        let Some(next) = header(&r, "location").and_then(|l| resolve_redirect(&url, &l)) else {
                            break Ok(r);
                        };
                        url = next;
                        redirects += 1;
                    }
                    other => break other,
                }
            };
            attempt += 1;
            match result {
                Ok(mut r) => {
                    let status = r.status().as_u16();
                    if matches!(status, 401 | 403) && !same_origin(&url, &self.base) {
                        // A host the registry redirected to wants credentials. Its challenge
                        // is not the registry's: answering it would hand the registry's
                        // credentials (or a token they buy) to that host.
                        let _ = self.error_message(&mut r);
                        return Err(RegistryError::RedirectAuth {
                            registry: self.registry.clone(),
                            other: host_of(&url),
                            what: what.to_string(),
                            status,
                        });
                    }
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
                        let _ = self.error_message(&mut r);
                        return Err(self.unauthorized(status, what));
                    }
                    if transient(status) && replayable && self.may_retry(attempt, started) {
                        let wait = backoff(attempt - 1, retry_after(&r));
                        let _ = self.error_message(&mut r);
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
                    if retryable && replayable && self.may_retry(attempt, started) {
                        std::thread::sleep(backoff(attempt - 1, None));
                        continue;
                    }
                    return Err(self.http_error(what, e));
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
            message: self.error_message(&mut r),
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
        assert_eq!(origin_of("https://a.example:5000/v2/x?y").unwrap(), "https://a.example:5000");
        assert_eq!(origin_of("HTTPS://A.example/v2/").unwrap(), "https://a.example:443");
        assert!(same_origin("http://127.0.0.1:80/v2/", "http://127.0.0.1/"));
        assert!(!same_origin("http://127.0.0.1:5000/v2/", "https://127.0.0.1:5000/v2/"));
        assert!(!same_origin("http://127.0.0.1:5000@evil.example/v2/", "http://127.0.0.1:5000"));
        assert!(!same_origin("http://a.example.evil/", "http://a.example"));
        assert_eq!(origin_of("ftp://a/"), None);
        for junk in ["https://reg.example:B500/", "https://[::1]5000/", "https://reg.example:/", "http://a:0/"] {
            assert_eq!(origin_of(junk), None, "{junk}");
        }
        assert_eq!(origin_of("http://[::1]:05000/").unwrap(), "http://[::1]:5000");
        let cur = "https://reg.example/v2/a/blobs/x";
        assert_eq!(resolve_redirect(cur, "/other").unwrap(), "https://reg.example/other");
        assert_eq!(resolve_redirect(cur, "//cdn.example/b").unwrap(), "https://cdn.example/b");
        assert_eq!(resolve_redirect(cur, "http://cdn.example/b").unwrap(), "http://cdn.example/b");
        assert_eq!(resolve_redirect(cur, "relative/x"), None);
        assert_eq!(resolve_redirect(cur, "file:///etc/passwd"), None);
        assert_eq!(backoff(10, None), Duration::from_secs(16));
        assert_eq!(backoff(0, Some(Duration::from_secs(3))), Duration::from_secs(3));
    }
}
