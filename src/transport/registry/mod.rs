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

use std::path::PathBuf;

pub mod auth;
pub mod certs;
pub mod client;
pub mod credentials;
mod pull;
mod push;

pub use pull::RegistrySource;
pub use push::push;

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
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions { tls_verify: true, auth_file: None, jobs: 3, chunk_size: DEFAULT_CHUNK_SIZE }
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
