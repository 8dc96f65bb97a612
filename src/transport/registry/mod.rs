//! `docker://NAME`: images in a registry, spoken to with the OCI distribution protocol.
//!
//! - [`client`]: one registry's HTTP client (scheme, TLS, retries, redirects, auth).
//! - [`auth`]: `WWW-Authenticate` challenges, scopes, the token flow.
//! - [`credentials`]: auth files, Docker's config and credential helpers; login/logout.
//! - [`certs`]: the system roots and the containers `certs.d` directories.
//! - [`pull`]: the source side: manifests and configs eagerly, layers lazily, all verified
//!   and kept in the store.
//! - [`push`]: the destination side: exists → mount → upload for each blob, then the
//!   manifest.
//! - [`locations`]: which repositories of a registry hold a blob, remembered in the cache
//!   so that later pushes mount instead of uploading.

use std::path::PathBuf;
use std::time::Duration;

pub mod auth;
pub mod certs;
pub mod client;
pub mod credentials;
pub mod locations;
mod pull;
mod push;

pub use pull::RegistrySource;
pub use push::{push, push_index};

/// How to talk to registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// `false`: do not verify TLS certificates, and allow plain http when https fails.
    pub tls_verify: bool,
    /// Read (and for login, write) credentials here first.
    pub auth_file: Option<PathBuf>,
    /// Blobs transferred at once.
    pub jobs: usize,
    /// Blobs larger than this are uploaded in chunks of this size.
    pub chunk_size: u64,
    /// How long to wait, how slow is too slow, and how often to try again.
    pub limits: Limits,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls_verify: true,
            auth_file: None,
            jobs: 3,
            chunk_size: DEFAULT_CHUNK_SIZE,
            limits: Limits::default(),
        }
    }
}

/// Deadlines and retry bounds for registry requests: a registry that is silent, or sends a
/// few bytes now and then, fails the build instead of hanging it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Connecting (TCP and the TLS handshake).
    pub connect: Duration,
    /// From sending a request to the answer's headers.
    pub response: Duration,
    /// A body (either way) that moves slower than `min_rate` bytes/s over `slow_time` is
    /// given up; so is one that moves nothing for `slow_time`.
    pub min_rate: u64,
    pub slow_time: Duration,
    /// Tries of one request (transient errors are retried), and the time after its first
    /// try when no new one starts.
    pub attempts: u32,
    pub retry_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: Duration::from_secs(30),
            response: Duration::from_secs(120),
            min_rate: 1024,
            slow_time: Duration::from_secs(60),
            attempts: 5,
            retry_time: Duration::from_secs(300),
        }
    }
}

/// A limit override that is not usable.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("{name}={value:?} is not a positive number")]
    NotPositive { name: &'static str, value: String },
}

impl Limits {
    /// The environment variables that override each limit, with what they set.
    pub const ENV: [(&'static str, &'static str); 6] = [
        ("IMGFORGE_REGISTRY_CONNECT_TIMEOUT", "seconds to connect"),
        ("IMGFORGE_REGISTRY_RESPONSE_TIMEOUT", "seconds to wait for an answer"),
        ("IMGFORGE_REGISTRY_MIN_RATE", "bytes/s below which a transfer is too slow"),
        ("IMGFORGE_REGISTRY_SLOW_TIME", "seconds a transfer may stay too slow"),
        ("IMGFORGE_REGISTRY_ATTEMPTS", "tries of one request"),
        ("IMGFORGE_REGISTRY_RETRY_TIME", "seconds after which no retry starts"),
    ];

    /// The defaults with the overrides `get` finds (by the names in [`Limits::ENV`]);
    /// an error names a value that is not a positive number.
    pub fn with_overrides(get: impl Fn(&str) -> Option<String>) -> Result<Limits, LimitError> {
        let mut l = Limits::default();
        for (name, _) in Self::ENV {
            let Some(v) = get(name) else { continue };
            let n: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite() && *n > 0.0 && *n < 1e9)
                .ok_or_else(|| LimitError::NotPositive { name, value: v.clone() })?;
            let secs = Duration::from_secs_f64(n);
            match name {
                "IMGFORGE_REGISTRY_CONNECT_TIMEOUT" => l.connect = secs,
                "IMGFORGE_REGISTRY_RESPONSE_TIMEOUT" => l.response = secs,
                "IMGFORGE_REGISTRY_MIN_RATE" => l.min_rate = n as u64,
                "IMGFORGE_REGISTRY_SLOW_TIME" => l.slow_time = secs,
                "IMGFORGE_REGISTRY_ATTEMPTS" => l.attempts = (n as u32).max(1),
                _ => l.retry_time = secs,
            }
        }
        Ok(l)
    }
}

/// Blobs up to this size go up in one PUT; larger ones in PATCH chunks of this size.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Failed to reach {registry} ({what}): {source}")]
    Http {
        registry: String,
        what: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{status} from {registry} for {what}: {hint}")]
    Unauthorized { registry: String, what: String, status: u16, hint: String },
    #[error("{what}: {registry} answered {status}{}", if message.is_empty() { String::new() } else { format!(" ({message})") })]
    Status { registry: String, what: String, status: u16, message: String },
    #[error(
        "{what}: {registry} redirected the request to {other}, which answered {status} asking for credentials. \
         imgforge sends the credentials for {registry} only to {registry} itself and to the token server its own \
         challenge names, never to a host it redirects to; ask {registry}'s operator to make the redirect target \
         readable without credentials (as blob storage URLs with signed queries are)"
    )]
    RedirectAuth { registry: String, other: String, what: String, status: u16 },
    #[error("{what}: {registry} {detail}")]
    Slow { registry: String, what: String, detail: String },
    #[error("{0}")]
    Protocol(String),
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Runs `f` on every item, at most `jobs` at once; the first error wins.
pub(crate) fn parallel<T: Sync, E: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                if let Err(e) = f(item) {
                    failed.store(true, Ordering::Relaxed);
                    first_err.lock().expect("lock").get_or_insert(e);
                    return;
                }
            });
        }
    });
    match first_err.into_inner().expect("lock") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Checks that a registry accepts these credentials; stores them on success and returns
/// the file they went to.
pub fn login(registry: &str, username: &str, password: &str, opts: &RegistryOptions) -> Result<PathBuf, RegistryError> {
    let creds = credentials::Credentials {
        username: username.into(),
        secret: password.into(),
        from: "the command line".into(),
    };
    let client = client::Client::with_credentials(registry, opts, Vec::new(), Some(creds))?;
    // GET /v2/ with the credentials: Basic is checked by the registry, Bearer by the token
    // server (asked for a token with no scope, as `docker login` does).
    let r = client.send("GET", &client.url("/v2/"), &[], client::Body::Empty, "login")?;
    if !r.status().is_success() {
        return Err(client.status_error(r, "login"));
    }
    credentials::store(registry, username, password, opts.auth_file.as_deref())
}

/// Removes stored credentials; `Ok(None)` when there were none.
pub fn logout(registry: &str, opts: &RegistryOptions) -> Result<Option<PathBuf>, RegistryError> {
    credentials::remove(registry, opts.auth_file.as_deref())
}

#[cfg(test)]
mod tests {
    use super::Limits;
    use std::time::Duration;

    #[test]
    fn limits_from_the_environment() {
        let l = Limits::with_overrides(|k| match k {
            "IMGFORGE_REGISTRY_RESPONSE_TIMEOUT" => Some("2.5".into()),
            "IMGFORGE_REGISTRY_MIN_RATE" => Some("4096".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(l.response, Duration::from_millis(2500));
        assert_eq!(l.min_rate, 4096);
        assert_eq!(l.connect, Limits::default().connect);
        let e = Limits::with_overrides(|k| (k == "IMGFORGE_REGISTRY_ATTEMPTS").then(|| "-1".into())).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("IMGFORGE_REGISTRY_ATTEMPTS"), "{e}");
    }

    #[test]
    fn parallel_runs_all_and_reports_an_error() {
        let items: Vec<u32> = (0..20).collect();
        let sum = std::sync::atomic::AtomicU32::new(0);
        super::parallel(&items, 3, |i| {
            sum.fetch_add(*i, std::sync::atomic::Ordering::Relaxed);
            Ok::<(), String>(())
        })
        .unwrap();
        assert_eq!(sum.into_inner(), 190);
        let e = super::parallel(&items, 2, |i| if *i == 7 { Err(format!("bad {i}")) } else { Ok(()) });
        assert_eq!(e.unwrap_err(), "bad 7");
    }
}
