//! TLS settings for one registry: the system's roots plus the containers convention's
//! per-registry directories, `/etc/containers/certs.d/HOST[:PORT]/` and
//! `~/.config/containers/certs.d/HOST[:PORT]/` (`*.crt` extra CAs, `*.cert` + `*.key` a
//! client certificate). `--tls-verify=false` turns verification off.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, TlsConfig};
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, TcpConnector,
    Transport, TransportAdapter,
};

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

/// What `certs.d` holds for one registry: extra CAs (also trusted as server certificates
/// when the server presents exactly one of them) and a client certificate.
struct CertsD {
    extra: Vec<Certificate<'static>>,
    client: Option<(Vec<Certificate<'static>>, PathBuf)>,
}

fn read_certs_d(registry: &str) -> Result<CertsD, RegistryError> {
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
                    client = Some((certs_in(&read(p)?), key));
                }
                _ => {}
            }
        }
    }
    Ok(CertsD { extra, client })
}

/// How to speak TLS to one registry.
pub enum Tls {
    /// Verified: the rustls configuration for [`connector`].
    Verify(Arc<rustls::ClientConfig>),
    /// `--tls-verify=false`: ureq's own TLS with verification off.
    NoVerify(TlsConfig),
}

/// The TLS configuration for `registry`.
pub fn tls_config(registry: &str, verify: bool) -> Result<Tls, RegistryError> {
    let certs_d = read_certs_d(registry)?;
    if !verify {
        let client = match &certs_d.client {
            Some((certs, key)) => Some(ClientCert::new_with_certs(
                certs,
                PrivateKey::from_pem(&read(key)?).map_err(|e| RegistryError::Tls(format!("{}: {e}", key.display())))?,
            )),
            None => None,
        };
        return Ok(Tls::NoVerify(TlsConfig::builder().client_cert(client).disable_verification(true).build()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let system = system_roots();
    if system.is_empty() && certs_d.extra.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots.add_parsable_certificates(
        system.iter().chain(&certs_d.extra).map(|c| CertificateDer::from(c.der()).into_owned()),
    );
    let tls_err = |e: &dyn std::fmt::Display| RegistryError::Tls(format!("{registry}: {e}"));
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_err(&e))?;
    let verifier =
        Arc::new(CertsDVerifier { pinned: certs_d.extra.iter().map(|c| c.der().to_vec()).collect(), webpki });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| tls_err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &certs_d.client {
        Some((certs, key)) => {
            let chain = certs.iter().map(|c| CertificateDer::from(c.der()).into_owned()).collect();
            let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| RegistryError::Tls(format!("{}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| tls_err(&e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Tls::Verify(Arc::new(config)))
}

/// The normal WebPKI verification, plus what containers/image does for `certs.d`: a server
/// certificate byte-identical to one configured there is trusted as itself (the usual
/// self-signed `openssl req -x509` certificate is its own CA, which WebPKI refuses as a
/// server certificate), provided it names the host. Signatures are always checked.
#[derive(Debug)]
struct CertsDVerifier {
    pinned: Vec<Vec<u8>>,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for CertsDVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let err = match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !self.pinned.iter().any(|p| p.as_slice() == end_entity.as_ref()) {
            return Err(err);
        }
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| err.clone())?;
        cert.verify_is_valid_for_subject_name(server_name)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// ureq's connector chain (proxy, TCP) with TLS through `config`.
pub fn connector(config: Arc<rustls::ClientConfig>) -> impl Connector {
    ().chain(ConnectProxyConnector::default()).chain(TcpConnector::default()).chain(RustlsWith { config })
}

#[derive(Debug)]
struct RustlsWith {
    config: Arc<rustls::ClientConfig>,
}

impl<In: Transport> Connector<In> for RustlsWith {
    type Out = Either<In, TlsTransport>;

    fn connect(&self, details: &ConnectionDetails, chained: Option<In>) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else { return Ok(None) };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details.uri.host().unwrap_or_default();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let name = ServerName::try_from(host.to_string()).map_err(|_| ureq::Error::Tls("invalid server name"))?;
        let mut conn = rustls::ClientConnection::new(self.config.clone(), name)?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)?;
        let buffers = LazyBuffers::new(details.config.input_buffer_size(), details.config.output_buffer_size());
        Ok(Some(Either::B(TlsTransport { buffers, stream: rustls::StreamOwned { conn, sock } })))
    }
}

struct TlsTransport {
    buffers: LazyBuffers,
    stream: rustls::StreamOwned<rustls::ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport").finish()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}
