//! TLS settings for one registry: the system's roots plus the containers convention's
//! per-registry directories, `/etc/containers/certs.d/HOST[:PORT]/` and
//! `~/.config/containers/certs.d/HOST[:PORT]/` (`*.crt` extra CAs, `*.cert` + `*.key` a
//! client certificate). `--tls-verify=false` turns verification off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use super::RegistryError;

/// The certs.d directories for `registry` (`host[:port]`), in the order they are read.
pub fn cert_dirs(registry: &str) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/etc/containers/certs.d").join(registry)];
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(h).join(".config/containers/certs.d").join(registry));
    }
    v.push(PathBuf::from("/etc/docker/certs.d").join(registry));
    v
}

/// The system's CA bundle (Debian's, Fedora's, or `$SSL_CERT_FILE`).
fn system_roots() -> Vec<Certificate<'static>> {
    let candidates = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from).into_iter().chain(
        ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
            .map(PathBuf::from),
    );
    for p in candidates {
        if let Ok(bytes) = std::fs::read(&p) {
            let certs = certs_in(&bytes);
            if !certs.is_empty() {
                return certs;
            }
        }
    }
    Vec::new()
}

fn certs_in(pem: &[u8]) -> Vec<Certificate<'static>> {
    parse_pem(pem)
        .filter_map(|i| match i {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

fn read(p: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(p).map_err(|e| RegistryError::Tls(format!("cannot read {}: {e}", p.display())))
}

/// The TLS configuration for `registry`.
pub fn tls_config(registry: &str, verify: bool) -> Result<TlsConfig, RegistryError> {
    let mut extra = Vec::new();
    let mut client = None;
    for dir in cert_dirs(registry) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for p in &names {
            match p.extension().and_then(|e| e.to_str()) {
                Some("crt") => {
                    let certs = certs_in(&read(p)?);
                    if certs.is_empty() {
                        return Err(RegistryError::Tls(format!("{}: no PEM certificate in it", p.display())));
                    }
                    extra.extend(certs);
                }
                Some("cert") if client.is_none() => {
                    let key = p.with_extension("key");
                    if !key.is_file() {
                        return Err(RegistryError::Tls(format!(
                            "{}: client certificate without its key {}",
                            p.display(),
                            key.display()
                        )));
                    }
                    let certs = certs_in(&read(p)?);
                    let key = PrivateKey::from_pem(&read(&key)?)
                        .map_err(|e| RegistryError::Tls(format!("{}: {e}", key.display())))?;
                    client = Some(ClientCert::new_with_certs(&certs, key));
                }
                _ => {}
            }
        }
    }
    let mut roots = system_roots();
    let root_certs = if roots.is_empty() && extra.is_empty() {
        RootCerts::WebPki
    } else {
        roots.extend(extra);
        RootCerts::Specific(Arc::new(roots))
    };
    Ok(TlsConfig::builder().root_certs(root_certs).client_cert(client).disable_verification(!verify).build())
}
