//! A real registry for the tests: Debian's `docker-registry` (the CNCF distribution
//! registry) on a free 127.0.0.1 port, with its storage and access log in the test's dir.
//! Three modes: plain http; TLS (a CA made here with openssl) with htpasswd Basic auth; and
//! `auth: token`, with a token server in this process that issues RS256 JWTs the registry
//! trusts (its signing certificate is the registry's `rootcertbundle`, sent in `x5c`).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use super::{free_port, require_tool, run_ok, TestDir};

pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret-pass";
pub const SERVICE: &str = "imgforge-test-registry";
pub const ISSUER: &str = "imgforge-test-issuer";
/// The OAuth2 refresh token ("identity token") the token server accepts.
pub const REFRESH_TOKEN: &str = "imgforge-test-refresh-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    TlsBasic,
    Token,
    MutualTls,
    /// TLS with a self-signed certificate made the way most users make one (see
    /// [`self_signed`]), trusted through certs.d; no auth.
    SelfSigned,
}

/// One request as the registry logged it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// What the token server was asked: scopes, and whether the caller had valid credentials.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub scopes: Vec<String>,
    pub authenticated: bool,
}

pub struct Registry {
    child: Child,
    pub mode: Mode,
    pub port: u16,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub dir: PathBuf,
    log: PathBuf,
    /// The CA that signed the TLS certificate (TLS mode).
    pub ca: Option<PathBuf>,
    /// A HOME whose `.config/containers/certs.d/HOST/ca.crt` is the CA (TLS mode).
    pub home: PathBuf,
    pub token_requests: Arc<Mutex<Vec<TokenRequest>>>,
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// `NAME.key` and `NAME.crt` in `dir`, signed by `ca.crt`/`ca.key` with these extensions.
fn make_cert(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, crt, extf) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
    let mut a = vec!["req"];
    a.extend(EC);
    a.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
    openssl(dir, &a);
    fs::write(dir.join(&extf), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &extf,
        ],
    );
}

/// A CA (`ca.crt`, `ca.key`) and a server certificate for 127.0.0.1 (`server.crt`, `server.key`).
fn make_tls(dir: &Path) {
    let mut a = vec!["req", "-x509"];
    a.extend(EC);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=imgforge test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &a);
    make_cert(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
}

/// `NAME.crt` and `NAME.key` in `dir`, made with the recipe users follow for an internal
/// registry (distribution's docs), with rsa:2048 instead of rsa:4096 to keep it quick: a
/// self-signed certificate that is its own CA (OpenSSL adds `CA:TRUE`).
pub fn self_signed(dir: &Path, name: &str) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
    );
}

impl Registry {
    pub fn start(t: &TestDir, mode: Mode) -> Registry {
        require_tool("docker-registry");
        require_tool("openssl");
        let port = free_port();
        let dir = t.mkdir(format!("registry-{mode:?}-{port}").to_lowercase());
        let storage = dir.join("storage");
        fs::create_dir_all(&storage).unwrap();
        let home = dir.join("home");
        fs::create_dir_all(&home).unwrap();
        let host = format!("127.0.0.1:{port}");
        let mut extra = String::new();
        let mut ca = None;
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        match mode {
            Mode::Plain => {}
            Mode::TlsBasic => {
                require_tool("htpasswd");
                make_tls(&dir);
                let out = run_ok(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
                fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
                let certs_d = home.join(".config/containers/certs.d").join(&host);
                fs::create_dir_all(&certs_d).unwrap();
                fs::copy(dir.join("ca.crt"), certs_d.join("ca.crt")).unwrap();
                ca = Some(dir.join("ca.crt"));
                extra = format!(
                    "  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\nauth:\n  htpasswd:\n    realm: imgforge-test\n    path: {d}/htpasswd\n",
                    d = dir.display()
                );
            }
            Mode::MutualTls => {
                // TLS that requires a client certificate signed by the CA; no other auth.
                make_tls(&dir);
                make_cert(
                    &dir,
                    "client",
                    "/CN=imgforge test client",
                    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
                );
                let certs_d = home.join(".config/containers/certs.d").join(&host);
                fs::create_dir_all(&certs_d).unwrap();
                fs::copy(dir.join("ca.crt"), certs_d.join("ca.crt")).unwrap();
                ca = Some(dir.join("ca.crt"));
                extra = format!(
                    "  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n    clientcas:\n      - {d}/ca.crt\n",
                    d = dir.display()
                );
            }
            Mode::SelfSigned => {
                self_signed(&dir, "domain");
                let certs_d = home.join(".config/containers/certs.d").join(&host);
                fs::create_dir_all(&certs_d).unwrap();
                fs::copy(dir.join("domain.crt"), certs_d.join("ca.crt")).unwrap();
                ca = Some(dir.join("domain.crt"));
                extra =
                    format!("  tls:\n    certificate: {d}/domain.crt\n    key: {d}/domain.key\n", d = dir.display());
            }
            Mode::Token => {
                openssl(&dir, &["genrsa", "-out", "token.key", "2048"]);
                openssl(
                    &dir,
                    &[
                        "req",
                        "-x509",
                        "-key",
                        "token.key",
                        "-out",
                        "token.crt",
                        "-days",
                        "2",
                        "-subj",
                        "/CN=imgforge test token signer",
                    ],
                );
                openssl(&dir, &["x509", "-in", "token.crt", "-outform", "DER", "-out", "token.der"]);
                let tport = start_token_server(&dir, token_requests.clone());
                extra = format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{tport}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {d}/token.crt\n",
                    d = dir.display()
                );
            }
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: imgforge-test-secret\n{extra}",
            storage = storage.display()
        );
        fs::write(dir.join("config.yml"), &config).unwrap();
        let log = dir.join("registry.log");
        let logf = fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start docker-registry");
        let r = Registry { child, mode, port, host, dir, log, ca, home, token_requests };
        r.wait_ready();
        r
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not listen on {} within 20 s:\n{}",
            self.host,
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// The registry's log (access log and its own lines).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every request in the access log so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.log_text()
            .lines()
            .filter_map(|l| {
                // 127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"
                let (_, rest) = l.split_once("] \"")?;
                let (req, rest) = rest.split_once('"')?;
                let mut p = req.split(' ');
                let method = p.next()?.to_string();
                let path = p.next()?.to_string();
                let status = rest.split_whitespace().next()?.parse().ok()?;
                Some(Logged { method, path, status })
            })
            .collect()
    }

    /// A marker: `requests_since(mark)` gives what came after it.
    pub fn mark(&self) -> usize {
        self.requests().len()
    }

    pub fn requests_since(&self, mark: usize) -> Vec<Logged> {
        self.requests().into_iter().skip(mark).collect()
    }

    /// The data file of a blob in the registry's storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir.join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// `docker://127.0.0.1:PORT/NAME`
    pub fn reference(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Starts the token server on a free port; returns the port. It answers
/// `GET /token?service=…&scope=…` with a JWT granting every requested action when the
/// request carries the test user's Basic credentials, and nothing otherwise.
fn start_token_server(dir: &Path, log: Arc<Mutex<Vec<TokenRequest>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = dir.to_path_buf();
    let der = fs::read(dir.join("token.der")).unwrap();
    let x5c = base64::engine::general_purpose::STANDARD.encode(der);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (dir, x5c, log) = (dir.clone(), x5c.clone(), log.clone());
            std::thread::spawn(move || {
                let _ = serve_token(stream, &dir, &x5c, &log);
            });
        }
    });
    port
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_token(stream: TcpStream, dir: &Path, x5c: &str, log: &Mutex<Vec<TokenRequest>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(Head { method, target, len, authorization }) = read_head(&mut reader)? else { return Ok(()) };
    let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")));
    let mut authorized = authorization.as_deref() == Some(want.as_str());
    // GET with query parameters (Basic credentials), or POST with a form (OAuth2 refresh
    // token, as clients with an identity token do).
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let query = if method == "POST" { body.as_str() } else { target.split_once('?').map(|(_, q)| q).unwrap_or("") };
    let mut scopes = Vec::new();
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("scope", v)) => scopes.extend(url_decode(v).split(' ').filter(|s| !s.is_empty()).map(str::to_string)),
            Some(("refresh_token", v)) if method == "POST" => authorized = url_decode(v) == REFRESH_TOKEN,
            _ => {}
        }
    }
    log.lock().unwrap().push(TokenRequest { scopes: scopes.clone(), authenticated: authorized });
    let mut stream = stream;
    if !authorized && query.contains("account=") {
        stream.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let access: Vec<serde_json::Value> = if authorized {
        scopes
            .iter()
            .filter_map(|s| {
                let (typ, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({"type": typ, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect()
    } else {
        Vec::new()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": if authorized { USER } else { "" }, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now - 10,
        "jti": format!("{now}-{}", std::process::id()), "access": access,
    });
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("token.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(signing_input.as_bytes())?;
    let mut sig = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut sig)?;
    child.wait()?;
    let jwt = format!("{signing_input}.{}", b64url(&sig));
    let body = serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300}).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// A fault the [`FlakyProxy`] injects once, into the first request that matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer `status` (with `Retry-After: retry_after` when given) instead of forwarding.
    Status { method: &'static str, path_contains: &'static str, status: u16, retry_after: Option<u64> },
    /// Forward, then send the headers and only half of the body, and drop the connection.
    Truncate { method: &'static str, path_contains: &'static str },
    /// Answer `307` with `Location: {to}{path}` (another host, as blob storage would be).
    Redirect { method: &'static str, path_contains: &'static str, to: String },
}

/// A request as the proxy saw it: method, path, Range header, and the fault it got.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    /// Whether the request carried an Authorization header.
    pub authorization: bool,
    pub fault: Option<String>,
}

/// A TCP proxy in front of the real registry that injects faults: 5xx/429 answers and
/// dropped connections. One request per connection (`Connection: close`).
pub struct FlakyProxy {
    pub port: u16,
    pub host: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub faults: Arc<Mutex<Vec<Fault>>>,
}

impl FlakyProxy {
    pub fn start(upstream: u16) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let faults: Arc<Mutex<Vec<Fault>>> = Arc::new(Mutex::new(Vec::new()));
        let (s2, f2) = (seen.clone(), faults.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (s, f) = (s2.clone(), f2.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(stream, upstream, &s, &f);
                });
            }
        });
        FlakyProxy { port, host: format!("127.0.0.1:{port}"), seen, faults }
    }

    pub fn inject(&self, f: Fault) {
        self.faults.lock().unwrap().push(f);
    }

    pub fn reference(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.host)
    }
}

fn proxy_one(
    client: TcpStream,
    upstream: u16,
    seen: &Mutex<Vec<Seen>>,
    faults: &Mutex<Vec<Fault>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    let mut len = 0usize;
    let mut range = None;
    let mut authorization = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h.as_str(), ""));
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        match k.as_str() {
            "content-length" => len = v.parse().unwrap_or(0),
            "connection" => continue,
            "range" => range = Some(v.clone()),
            "authorization" => authorization = true,
            _ => {}
        }
        headers.push(format!("{k}: {v}"));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let fault = {
        let mut f = faults.lock().unwrap();
        let i = f.iter().position(|x| match x {
            Fault::Status { method: m, path_contains: p, .. }
            | Fault::Truncate { method: m, path_contains: p }
            | Fault::Redirect { method: m, path_contains: p, .. } => *m == method && path.contains(p),
        });
        i.map(|i| f.remove(i))
    };
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        range,
        authorization,
        fault: fault.as_ref().map(|f| format!("{f:?}")),
    });
    let mut client = client;
    if let Some(Fault::Status { status, retry_after, .. }) = fault {
        let ra = retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
        write!(client, "HTTP/1.1 {status} Injected\r\n{ra}Content-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    if let Some(Fault::Redirect { to, .. }) = &fault {
        write!(
            client,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    write!(up, "{method} {path} HTTP/1.1\r\n")?;
    for h in &headers {
        write!(up, "{h}\r\n")?;
    }
    write!(up, "connection: close\r\n\r\n")?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(resp.len(), |i| i + 4);
    let (head, rest) = resp.split_at(split);
    let head = String::from_utf8_lossy(head);
    let head: String = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect();
    client.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())?;
    if matches!(fault, Some(Fault::Truncate { .. })) {
        client.write_all(&rest[..rest.len() / 2])?;
        client.flush()?;
        return Ok(()); // dropped mid-body
    }
    client.write_all(rest)?;
    Ok(())
}

/// A request as a [`FakeServer`] read it.
#[derive(Clone, Debug)]
pub struct FakeRequest {
    pub method: String,
    pub path: String,
    /// The Authorization header, if any.
    pub authorization: Option<String>,
}

type Handler = dyn Fn(&FakeRequest, &mut TcpStream) -> std::io::Result<()> + Send + Sync;

/// A tiny HTTP server on 127.0.0.1 (its own origin) that records every request and lets
/// `handler` write whatever answer it likes, as slowly as it likes (or none at all).
pub struct FakeServer {
    pub host: String,
    pub seen: Arc<Mutex<Vec<FakeRequest>>>,
}

impl FakeServer {
    pub fn start(
        handler: impl Fn(&FakeRequest, &mut TcpStream) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, handler) = (s2.clone(), handler.clone());
                std::thread::spawn(move || {
                    let _ = serve_fake(stream, &seen, &*handler);
                });
            }
        });
        FakeServer { host, seen }
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_fake(stream: TcpStream, seen: &Mutex<Vec<FakeRequest>>, handler: &Handler) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let Some(Head { method, target: path, len, authorization }) = read_head(&mut reader)? else { return Ok(()) };
        std::io::copy(&mut (&mut reader).take(len as u64), &mut std::io::sink())?;
        let req = FakeRequest { method, path, authorization };
        seen.lock().unwrap().push(req.clone());
        let mut out = stream.try_clone()?;
        handler(&req, &mut out)?;
    }
}

/// A request's line and the headers the fakes look at.
struct Head {
    method: String,
    target: String,
    len: usize,
    authorization: Option<String>,
}

/// Reads a request's head; `None` when the connection ends first.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (mut len, mut authorization) = (0usize, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    Ok(Some(Head { method, target, len, authorization }))
}

/// Writes a complete HTTP/1.1 response with a body.
pub fn respond(out: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}
