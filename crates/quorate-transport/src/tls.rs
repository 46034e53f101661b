//! Mutual TLS: loading (and reloading) the CA bundle, certificate chain, key and certificate
//! revocation lists from files, building the rustls configurations (TLS 1.3 only, 0-RTT off,
//! ALPN `quorate/2` then `quorate/1`, client certificates required, revoked certificates
//! refused both ways) and reading the `quorate://` identity out of a peer certificate.

use crate::CRL_FILES_MAX;
use crate::der;
use crate::frame::ALPNS;
use crate::identity::{Identity, IdentityError, URI_SCHEME};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest certificate revocation list file read (bytes).
pub const CRL_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

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
    /// A certificate revocation list file is unreadable, too large, or not a CRL.
    #[error("certificate revocation list {path}: {what}")]
    Crl {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The certificate does not verify now against the CA bundle and the revocation lists
    /// (expired, not yet valid, issued by another CA, revoked): peers would refuse it. A reload
    /// that finds this keeps the material in use.
    #[error("certificate {path} is not usable: {reason}")]
    NotUsable {
        /// The certificate file.
        path: PathBuf,
        /// Why it does not verify.
        reason: String,
    },
}

/// Everything built from one reading of the files.
struct Loaded {
    server: Arc<QuicServerConfig>,
    client: Arc<QuicClientConfig>,
    identity: Identity,
    /// Earliest `notAfter` over the leaf, the chain and the CA bundle (Unix seconds).
    earliest_not_after_unix: i64,
    mtimes: Vec<Option<FileStamp>>,
    /// The QUIC stateless-reset key, derived from the private key ([`ResetKey`]).
    reset_key: ResetKey,
    /// What a peer's chain is checked against (handshakes and re-checks of open connections).
    trust: Arc<Trust>,
    /// This endpoint's own chain, leaf first.
    chain: Vec<CertificateDer<'static>>,
}

/// The trust anchors, the revocation lists and the signature algorithms: enough to verify a
/// peer's chain at any time.
#[derive(Debug)]
pub(crate) struct Trust {
    roots: Arc<RootCertStore>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// What a verified certificate is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    /// A TLS client: every client, and a node dialing a peer.
    Client,
    /// A TLS server: a node accepting a connection.
    Server,
}

impl Trust {
    /// Verifies `chain` (leaf first) at `now`: it chains to a CA of the bundle, every
    /// certificate is within its validity period, the leaf allows `usage`, and no certificate
    /// of the chain is on a revocation list (a certificate whose issuer published no list is
    /// accepted: a list speaks only for its own CA).
    pub(crate) fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        usage: Usage,
        now: UnixTime,
    ) -> Result<(), webpki::Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(webpki::Error::BadDer)?;
        let cert = webpki::EndEntityCert::try_from(leaf)?;
        let crls: Vec<&webpki::CertRevocationList<'static>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crls).ok().map(|b| {
            b.with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
                .build()
        });
        let usage = match usage {
            Usage::Client => webpki::KeyUsage::client_auth(),
            Usage::Server => webpki::KeyUsage::server_auth(),
        };
        cert.verify_for_usage(self.algorithms.all, &self.roots.roots, intermediates, now, usage, revocation, None)
            .map(|_| ())
    }
}

/// A webpki verdict as the rustls error a handshake fails with.
fn pki_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    let c = match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::CertRevoked => C::Revoked,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::BadDer | webpki::Error::BadDerTime => C::BadEncoding,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(c)
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
    /// The files' stamps (time, length, inode, content digest) at the last refused reload (not retried until they change).
    failed_mtimes: Mutex<Option<Vec<Option<FileStamp>>>>,
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
        Credentials::load_with_crls(paths, Vec::new())
    }

    /// Like [`Credentials::load`], with certificate revocation lists: each file holds one or
    /// more CRLs, PEM (`-----BEGIN X509 CRL-----`) or one DER CRL. A peer whose chain holds a
    /// certificate listed by the CRL of its issuer is refused, both when it connects and when
    /// it is dialed; the lists are re-read with the certificates ([`Credentials::reload`]). At
    /// most [`CRL_FILES_MAX`] files of at most [`CRL_FILE_BYTES_MAX`] bytes each.
    pub fn load_with_crls(paths: TlsPaths, crls: Vec<PathBuf>) -> Result<Credentials, TlsError> {
        if crls.len() > CRL_FILES_MAX {
            return Err(TlsError::Crl {
                path: crls[CRL_FILES_MAX].clone(),
                what: format!("at most {CRL_FILES_MAX} revocation list files"),
            });
        }
        let loaded = load(&paths, &crls)?;
        if loaded.earliest_not_after_unix < now_unix() {
            tracing::warn!(target: "quorate::audit", who = %loaded.identity, what = "tls_load",
                result = "expired", "a loaded certificate has expired");
        }
        Ok(Credentials {
            paths,
            crls,
            current: RwLock::new(Arc::new(loaded)),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            failed_mtimes: Mutex::new(None),
        })
    }

    /// Re-reads the files. The new certificate must name the same identity and verify now
    /// against the new CA bundle and revocation lists (not expired, not yet valid, issued by
    /// another CA or revoked: peers would refuse it). On error the previous material stays in
    /// use, the failure is logged (audit target, `what=tls_reload result=failed`) and counted
    /// ([`Credentials::reload_failures`]).
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = load(&self.paths, &self.crls).and_then(|loaded| {
            let expected = self.identity();
            if loaded.identity != expected {
                return Err(TlsError::IdentityChanged {
                    expected: Box::new(expected),
                    found: Box::new(loaded.identity),
                });
            }
            usable(&loaded, &self.paths.cert)?;
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
                    what = "tls_reload", result = "failed", reason = %e,
                    "TLS reload refused; the certificates in use stay in force");
                Err(e)
            }
        }
    }

    /// Reloads if any file (CA bundle, certificate, key, revocation lists) changed since the
    /// last load: its modification time, length, inode or content (times alone are too coarse
    /// to tell a file replaced within a few milliseconds). Returns whether a reload happened. A failed
    /// reload is retried at the next change only.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = mtimes(&self.paths, &self.crls);
        let loaded = self.loaded();
        if now == loaded.mtimes {
            return Ok(false);
        }
        let mut failed = self.failed_mtimes.lock().unwrap_or_else(|p| p.into_inner());
        if failed.as_ref() == Some(&now) {
            return Ok(false);
        }
        match self.reload() {
            Ok(()) => {
                *failed = None;
                Ok(true)
            }
            Err(e) => {
                *failed = Some(now);
                Err(e)
            }
        }
    }

    /// Checks that the loaded certificate would be accepted now by an endpoint trusting the
    /// loaded CA bundle and revocation lists, for everything its identity does: a node's
    /// certificate as a TLS server and a TLS client, a client's as a TLS client (within its
    /// validity period, chained to the bundle, the extended key usages present, not revoked).
    /// `quorate certs issue` checks what it wrote with it.
    pub fn check_usable(&self) -> Result<(), TlsError> {
        usable(&self.loaded(), &self.paths.cert)
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

    /// What peers' chains are verified against now.
    pub(crate) fn trust(&self) -> Arc<Trust> {
        self.loaded().trust.clone()
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

    /// The stateless-reset key of the credentials loaded first (an endpoint keeps its key for
    /// its lifetime; see [`ResetKey`]).
    pub(crate) fn reset_key(&self) -> ResetKey {
        self.loaded().reset_key.clone()
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Whether `loaded`'s own chain verifies now for every usage of its identity.
fn usable(loaded: &Loaded, cert: &Path) -> Result<(), TlsError> {
    let usages: &[Usage] = match loaded.identity {
        Identity::Peer(_) => &[Usage::Client, Usage::Server],
        Identity::Client(_) => &[Usage::Client],
    };
    for &usage in usages {
        loaded
            .trust
            .verify(&loaded.chain, usage, UnixTime::now())
            .map_err(|e| TlsError::NotUsable { path: cert.to_path_buf(), reason: pki_error(e).to_string() })?;
    }
    Ok(())
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64
}

/// What tells one version of a file from the next: its modification time, length, (on Unix)
/// inode and a digest of its content. Times alone are coarse (a clock tick of a few
/// milliseconds): a file replaced right after another write can carry the same time; an
/// atomic replacement (write a temporary file, rename it over) always brings a new inode; a
/// rewrite in place with content of the same length within one tick changes only the
/// content. The files are small (certificates, keys, revocation lists of at most
/// [`CRL_FILE_BYTES_MAX`], which is also where the digest stops), so reading them at every
/// check costs little.
#[derive(Clone, PartialEq, Eq, Debug)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    digest: Option<u64>,
}

/// A digest of the first [`CRL_FILE_BYTES_MAX`] bytes of a file (not a security measure:
/// whoever can write the files chooses the node's identity anyway). `None` when unreadable.
fn content_digest(path: &Path) -> Option<u64> {
    use std::hash::Hasher;
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?.take(CRL_FILE_BYTES_MAX);
    let mut hasher = std::hash::DefaultHasher::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(hasher.finish()),
            Ok(n) => hasher.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn mtimes(paths: &TlsPaths, crls: &[PathBuf]) -> Vec<Option<FileStamp>> {
    [&paths.ca, &paths.cert, &paths.key]
        .into_iter()
        .chain(crls)
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            Some(FileStamp { modified: m.modified().ok(), len: m.len(), inode, digest: content_digest(p) })
        })
        .collect()
}

/// Reads the revocation lists of one file: PEM (any number of `X509 CRL` blocks) or DER.
pub(crate) fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let err = |what: String| TlsError::Crl { path: path.to_owned(), what };
    let len = std::fs::metadata(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?.len();
    if len > CRL_FILE_BYTES_MAX {
        return Err(err(format!("{len} bytes exceeds the limit of {CRL_FILE_BYTES_MAX}")));
    }
    let bytes = read(path)?;
    let ders: Vec<CertificateRevocationListDer<'static>> = if bytes.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(bytes)]
    } else {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?
    };
    if ders.is_empty() {
        return Err(err("no X509 CRL found (PEM or DER)".into()));
    }
    Ok(ders)
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

fn load(paths: &TlsPaths, crl_paths: &[PathBuf]) -> Result<Loaded, TlsError> {
    let mtimes = mtimes(paths, crl_paths);
    let mut crls = Vec::new();
    for path in crl_paths {
        for der in read_crls(path)? {
            // Checked here, so that a bad list fails the load rather than every handshake.
            let parsed = webpki::OwnedCertRevocationList::from_der(&der)
                .map_err(|e| TlsError::Crl { path: path.clone(), what: e.to_string() })?;
            crls.push((der, parsed));
        }
    }
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

    let reset_key = ResetKey::derive(key.secret_der(), &identity);
    let (ders, parsed): (Vec<_>, Vec<_>) = crls.into_iter().unzip();
    let (server, client, trust) = rustls_configs_with_crls(&ca, chain.clone(), key, ders, parsed)?;
    Ok(Loaded {
        server: Arc::new(QuicServerConfig::try_from(server)?),
        client: Arc::new(QuicClientConfig::try_from(client)?),
        identity,
        earliest_not_after_unix,
        mtimes,
        reset_key,
        trust,
        chain,
    })
}

/// HKDF and HMAC with SHA-256, from the ring provider that rustls already uses.
fn sha256_hkdf() -> &'static dyn rustls::crypto::tls13::Hkdf {
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => suite.hkdf_provider,
        // Only with rustls' `tls12` feature, which this crate does not enable; and this
        // suite is a TLS 1.3 suite by definition.
        #[allow(unreachable_patterns)]
        _ => unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
    }
}

/// The key a node signs QUIC stateless-reset tokens with (RFC 9000 §10.3): HMAC-SHA-256
/// under a key derived (HKDF) from the node's TLS private key and identity, so that it is
/// secret and the same after a restart. A restarted node can then prove to a peer that the
/// connection the peer still holds belongs to its previous incarnation, and the peer redials
/// at once instead of waiting for the idle timeout. A new private key (rotation) makes a new
/// reset key; connections to the previous incarnation then end by idle timeout, as before.
#[derive(Clone)]
pub(crate) struct ResetKey(rustls::crypto::tls13::OkmBlock);

impl ResetKey {
    /// Salt of the derivation (a version: changing it changes every node's key).
    const SALT: &'static [u8] = b"quorate/quic-stateless-reset/v1";

    fn derive(private_key_der: &[u8], identity: &Identity) -> ResetKey {
        let prk = sha256_hkdf().extract_from_secret(Some(Self::SALT), private_key_der);
        ResetKey(prk.expand_block(&[identity.to_string().as_bytes()]))
    }
}

/// Connection ids drawn from the crypto provider's secure random generator, and accepted
/// without validation. quinn's default generator validates ids with a key that is new in
/// every process, so a restarted node would silently drop its peers' packets for the old
/// connections instead of answering them with a stateless reset.
pub(crate) struct RandomCids;

impl RandomCids {
    /// Bytes of a connection id (quinn's default length).
    const LEN: usize = 8;
}

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        static FALLBACK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut bytes = [0u8; Self::LEN];
        if rustls::crypto::ring::default_provider().secure_random.fill(&mut bytes).is_err() {
            // The OS had no randomness to give (it never happens on Linux after boot): ids
            // that are at least unique within this process.
            let n = FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
            bytes = (t ^ n.rotate_left(32) ^ u64::from(std::process::id())).to_le_bytes();
        }
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        Self::LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(..)")
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = sha256_hkdf().hmac_sign(&self.0, data);
        let n = signature_out.len().min(tag.as_ref().len());
        signature_out[..n].copy_from_slice(&tag.as_ref()[..n]);
    }

    fn signature_len(&self) -> usize {
        sha256_hkdf().hmac_sign(&self.0, &[]).as_ref().len()
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let tag = sha256_hkdf().hmac_sign(&self.0, data);
        let expected = tag.as_ref();
        // Constant time over the expected length.
        let diff =
            expected.iter().zip(signature.iter().chain(std::iter::repeat(&0))).fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff == 0 && signature.len() == expected.len() { Ok(()) } else { Err(quinn::crypto::CryptoError) }
    }
}

/// The rustls server and client configurations: TLS 1.3 only, client certificates required,
/// 0-RTT and resumption off, and every ALPN id of [`ALPNS`] under these same settings.
#[cfg(all(test, feature = "dev-certs"))]
pub(crate) fn rustls_configs(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), TlsError> {
    rustls_configs_with_crls(ca, chain, key, Vec::new(), Vec::new()).map(|(s, c, _)| (s, c))
}

/// The rustls configurations as above, with revocation lists (`ders` and the same lists
/// parsed), and the [`Trust`] they make.
fn rustls_configs_with_crls(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ders: Vec<CertificateRevocationListDer<'static>>,
    parsed: Vec<webpki::OwnedCertRevocationList>,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig, Arc<Trust>), TlsError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    let roots = Arc::new(roots);
    let provider = provider();
    let trust = Arc::new(Trust {
        roots: roots.clone(),
        crls: parsed.into_iter().map(webpki::CertRevocationList::from).collect(),
        algorithms: provider.signature_verification_algorithms,
    });

    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    if !ders.is_empty() {
        // A list speaks for its own CA only: a certificate of another CA of the bundle (a CA
        // rotation) has an unknown status, which is accepted.
        builder = builder.with_crls(ders).allow_unknown_revocation_status();
    }
    let client_verifier = builder.build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    server.max_early_data_size = 0; // 0-RTT off
    server.send_tls13_tickets = 0; // no resumption either: every connection shows its cert

    let verifier = Arc::new(ChainOnlyVerifier { trust: trust.clone() });
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = ALPNS.iter().map(|a| a.to_vec()).collect();
    client.enable_early_data = false;
    client.resumption = rustls::client::Resumption::disabled();
    Ok((server, client, trust))
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

/// Verifies the server's chain against the cluster CA and the revocation lists, but not a
/// DNS name: peers are named by the URI SAN, which the transport checks against the node it
/// meant to reach right after the handshake, before it sends a byte.
#[derive(Debug)]
struct ChainOnlyVerifier {
    trust: Arc<Trust>,
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
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        self.trust.verify(&chain, Usage::Server, now).map_err(pki_error)?;
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
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.algorithms.supported_schemes()
    }
}

#[cfg(all(test, feature = "dev-certs"))]
#[path = "alpn_tests.rs"]
mod alpn_tests;

#[cfg(test)]
mod reset_key_tests {
    use super::*;
    use quinn::crypto::HmacKey;

    fn identity(node: u64) -> Identity {
        let cluster = crate::identity::ClusterId::new("alpha").unwrap();
        Identity::peer(cluster, quorate_log::NodeId::new(node).unwrap())
    }

    #[test]
    fn the_reset_key_is_stable_secret_and_checked() {
        let a = ResetKey::derive(b"private key of node 1", &identity(1));
        let again = ResetKey::derive(b"private key of node 1", &identity(1));
        let other_key = ResetKey::derive(b"private key of node 2", &identity(1));
        let other_node = ResetKey::derive(b"private key of node 1", &identity(2));
        let sign = |k: &ResetKey, data: &[u8]| {
            let mut out = vec![0u8; k.signature_len()];
            k.sign(data, &mut out);
            out
        };
        assert_eq!(a.signature_len(), 32);
        let token = sign(&a, b"connection id");
        assert_eq!(token, sign(&again, b"connection id"), "the same after a restart");
        assert_ne!(token, sign(&other_key, b"connection id"));
        assert_ne!(token, sign(&other_node, b"connection id"));
        assert_ne!(token, sign(&a, b"another id"));
        assert!(a.verify(b"connection id", &token).is_ok());
        let mut forged = token.clone();
        forged[31] ^= 1;
        assert!(a.verify(b"connection id", &forged).is_err());
        assert!(a.verify(b"connection id", &token[..16]).is_err(), "a short signature is refused");
        assert!(a.verify(b"another id", &token).is_err());
        assert_eq!(format!("{a:?}"), "ResetKey(..)", "never printed");
    }

    #[test]
    fn connection_ids_are_random() {
        use quinn::ConnectionIdGenerator;
        let mut g = RandomCids;
        let ids: std::collections::BTreeSet<Vec<u8>> = (0..100).map(|_| g.generate_cid().to_vec()).collect();
        assert_eq!(ids.len(), 100);
        assert!(ids.iter().all(|id| id.len() == RandomCids::LEN));
    }
}
