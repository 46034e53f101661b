//! Mutual TLS: loading (and reloading) the CA bundle, certificate chain and key from PEM files,
//! building the rustls configurations (TLS 1.3 only, 0-RTT off, ALPN `quorate/2` then
//! `quorate/1`, client certificates required) and reading the `quorate://` identity out of a peer certificate.

use crate::der;
use crate::frame::ALPNS;
use crate::identity::{Identity, IdentityError, URI_SCHEME};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a node's (or a client's) TLS material lives, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA bundle: one or more certificates that peers must chain to. During a CA
    /// rotation it holds both the old and the new CA.
    pub ca: PathBuf,
    /// This endpoint's certificate chain, leaf first.
    pub cert: PathBuf,
    /// This endpoint's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected type.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        what: String,
    },
    /// The leaf certificate has no (or more than one) `quorate://` URI SAN.
    #[error("certificate {path} names no single quorate identity: {reason}")]
    NoIdentity {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The identity URI in the certificate does not parse.
    #[error("certificate names an invalid identity: {0}")]
    Identity(#[from] IdentityError),
    /// A reloaded certificate names a different identity than the one in use.
    #[error("reloaded certificate names {found}, expected {expected}")]
    IdentityChanged {
        /// The identity in use.
        expected: Box<Identity>,
        /// The identity in the new certificate.
        found: Box<Identity>,
    },
    /// rustls refused the configuration (key does not match certificate, bad CA...).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (e.g. empty CA bundle).
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The cipher suites needed by QUIC are missing.
    #[error("QUIC crypto: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Everything built from one reading of the files.
struct Loaded {
    server: Arc<QuicServerConfig>,
    client: Arc<QuicClientConfig>,
    identity: Identity,
    /// Earliest `notAfter` over the leaf, the chain and the CA bundle (Unix seconds).
    earliest_not_after_unix: i64,
    mtimes: Vec<Option<SystemTime>>,
}

/// The TLS identity of one endpoint, reloadable at run time.
///
/// `reload` re-reads the files and atomically swaps the configuration used for *new*
/// connections (and for the server side of the endpoint, see
/// [`Transport::reload_tls`](crate::Transport::reload_tls)); established connections keep
/// their session. A reload that fails keeps the previous material.
pub struct Credentials {
    paths: TlsPaths,
    crls: Vec<PathBuf>,
    current: RwLock<Arc<Loaded>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("paths", &self.paths)
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Loads the CA bundle, certificate chain and key. An expired certificate loads (so that
    /// the expiry gauge can report it) but peers will refuse it.
    pub fn load(paths: TlsPaths) -> Result<Credentials, TlsError> {
        let loaded = load(&paths)?;
        if loaded.earliest_not_after_unix < now_unix() {
            tracing::warn!(target: "quorate::audit", who = %loaded.identity, what = "tls_load",
                result = "expired", "a loaded certificate has expired");
        }
        Ok(Credentials {
            paths,
            crls: Vec::new(),
            current: RwLock::new(Arc::new(loaded)),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// Like [`Credentials::load`], with certificate revocation lists (not read yet: the next
    /// commit checks them).
    pub fn load_with_crls(paths: TlsPaths, crls: Vec<PathBuf>) -> Result<Credentials, TlsError> {
        let mut c = Credentials::load(paths)?;
        c.crls = crls;
        Ok(c)
    }

    /// Re-reads the files. The new certificate must name the same identity. On error the
    /// previous material stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = load(&self.paths).and_then(|loaded| {
            let expected = self.identity();
            if loaded.identity != expected {
                return Err(TlsError::IdentityChanged {
                    expected: Box::new(expected),
                    found: Box::new(loaded.identity),
                });
            }
            Ok(loaded)
        });
        match result {
            Ok(loaded) => {
                let who = loaded.identity.to_string();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "quorate::audit", who, what = "tls_reload",
                    result = "ok", expiry_s = self.seconds_until_earliest_expiry());
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "quorate::audit", who = %self.identity(),
                    what = "tls_reload", result = "failed", reason = %e);
                Err(e)
            }
        }
    }

    /// Reloads if any of the three files' modification time changed since the last load.
    /// Returns whether a reload happened.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        if mtimes(&self.paths) == self.loaded().mtimes {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// How many successful reloads happened.
    #[must_use]
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// How many reloads were refused (the previous material stayed in use).
    #[must_use]
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// The certificate revocation list files.
    #[must_use]
    pub fn crl_paths(&self) -> &[PathBuf] {
        &self.crls
    }

    /// The identity named by the loaded certificate.
    #[must_use]
    pub fn identity(&self) -> Identity {
        self.loaded().identity.clone()
    }

    /// The files this was loaded from.
    #[must_use]
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// Seconds until the earliest `notAfter` among the leaf, its chain and the CA bundle;
    /// negative once something has expired. Export it as a gauge and alert well before zero.
    #[must_use]
    pub fn seconds_until_earliest_expiry(&self) -> i64 {
        self.loaded().earliest_not_after_unix - now_unix()
    }

    /// The QUIC server crypto configuration currently in force (TLS 1.3, ALPN `quorate/2` and `quorate/1`,
    /// client certificates required and verified against the CA bundle, 0-RTT off).
    #[must_use]
    pub fn quic_server_crypto(&self) -> Arc<QuicServerConfig> {
        self.loaded().server.clone()
    }

    /// The QUIC client crypto configuration currently in force (TLS 1.3, ALPN `quorate/2` and `quorate/1`,
    /// this certificate presented, the server's chain verified against the CA bundle; its
    /// identity is checked by the transport right after the handshake).
    #[must_use]
    pub fn quic_client_crypto(&self) -> Arc<QuicClientConfig> {
        self.loaded().client.clone()
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64
}

fn mtimes(paths: &TlsPaths) -> Vec<Option<SystemTime>> {
    [&paths.ca, &paths.cert, &paths.key].iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_owned(), what: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_owned(), what: "no CERTIFICATE found".into() });
    }
    Ok(certs)
}

/// The crypto provider: ring, TLS 1.3 suites only.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| s.version() == &rustls::version::TLS13);
    Arc::new(provider)
}

fn load(paths: &TlsPaths) -> Result<Loaded, TlsError> {
    let mtimes = mtimes(paths);
    let ca = certs(&paths.ca)?;
    let chain = certs(&paths.cert)?;
    let key_pem = read(&paths.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::Pem { path: paths.key.clone(), what: e.to_string() })?;
    let identity = identity_of(&chain[0]).map_err(|reason| match reason {
        IdentityOf::Invalid(e) => TlsError::Identity(e),
        IdentityOf::Missing(reason) => TlsError::NoIdentity { path: paths.cert.clone(), reason },
    })?;
    let earliest_not_after_unix = chain
        .iter()
        .chain(ca.iter())
        .map(|c| der::validity_unix(c).map(|(_, not_after)| not_after))
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().min())
        .ok_or_else(|| TlsError::Pem { path: paths.cert.clone(), what: "cannot read certificate validity".into() })?;

    let (server, client) = rustls_configs(&ca, chain, key)?;
    Ok(Loaded {
        server: Arc::new(QuicServerConfig::try_from(server)?),
        client: Arc::new(QuicClientConfig::try_from(client)?),
        identity,
        earliest_not_after_unix,
        mtimes,
    })
}

/// The rustls server and client configurations: TLS 1.3 only, client certificates required,
/// 0-RTT and resumption off, and every ALPN id of [`ALPNS`] under these same settings.
pub(crate) fn rustls_configs(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), TlsError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    let roots = Arc::new(roots);
    let provider = provider();

    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    server.max_early_data_size = 0; // 0-RTT off
    server.send_tls13_tickets = 0; // no resumption either: every connection shows its cert

    let verifier = Arc::new(ChainOnlyVerifier { roots, algorithms: provider.signature_verification_algorithms });
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    client.enable_early_data = false;
    client.resumption = rustls::client::Resumption::disabled();
    Ok((server, client))
}

pub(crate) enum IdentityOf {
    Missing(String),
    Invalid(IdentityError),
}

/// The identity in a leaf certificate's single `quorate://` URI SAN.
pub(crate) fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, IdentityOf> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| IdentityOf::Missing(format!("unparsable certificate: {e}")))?;
    let mut uris = parsed.valid_uri_names().filter(|u| u.starts_with(URI_SCHEME));
    let uri = uris.next().ok_or_else(|| IdentityOf::Missing("no quorate:// URI SAN".into()))?;
    if uris.next().is_some() {
        return Err(IdentityOf::Missing("more than one quorate:// URI SAN".into()));
    }
    Identity::parse(uri).map_err(IdentityOf::Invalid)
}

/// Verifies the server's chain against the cluster CA but not a DNS name: peers are named by
/// the URI SAN, which the transport checks against the node it meant to reach right after
/// the handshake, before it sends a byte.
#[derive(Debug)]
struct ChainOnlyVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(all(test, feature = "dev-certs"))]
#[path = "alpn_tests.rs"]
mod alpn_tests;
