//! Development certificates: a local cluster CA plus node and client certificates with the
//! right `quorate://` URI SANs, written as PEM files. For first runs, demos and tests — not
//! for production (the CA key is written next to the certificates).

use crate::identity::{ClusterId, Identity, Principal, Role};
use crate::tls::TlsPaths;
use quorate_log::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Default validity of development certificates.
pub const DEV_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest validity `generate` accepts for anything it issues.
pub const VALIDITY_MAX: Duration = Duration::from_secs(398 * 24 * 3600);

/// Why certificates could not be generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevCertError {
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rcgen refused the parameters.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A validity period that is empty or longer than [`VALIDITY_MAX`].
    #[error("invalid validity period")]
    Validity,
    /// A certificate to revoke could not be read.
    #[error("cannot read certificate {path}: {what}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
}

/// A validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start.
    pub not_before: SystemTime,
    /// End.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clock skew) to `duration` from now.
    #[must_use]
    pub fn from_now(duration: Duration) -> Validity {
        let now = SystemTime::now();
        Validity { not_before: now - Duration::from_secs(3600), not_after: now + duration }
    }

    fn check(&self) -> Result<(), DevCertError> {
        match self.not_after.duration_since(self.not_before) {
            Ok(d) if !d.is_zero() && d <= VALIDITY_MAX => Ok(()),
            _ => Err(DevCertError::Validity),
        }
    }
}

/// A development certificate authority, held in memory, that can issue more certificates
/// (rotations, and the odd certificate tests need: expired, wrong node, wrong cluster).
pub struct DevCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA for `cluster` (the name only goes into the subject).
    pub fn new(cluster: &ClusterId, validity: Validity) -> Result<DevCa, DevCertError> {
        validity.check()?;
        let mut params = CertificateParams::default();
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("quorate dev CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(DevCa { params, key, pem })
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// Issues a certificate for `identity` and writes `<dir>/<name>.crt` and `<dir>/<name>.key`
    /// (the key readable by the owner only). The returned paths name `ca` as the CA bundle.
    pub fn issue(
        &self,
        identity: &Identity,
        validity: Validity,
        dir: &Path,
        name: &str,
        ca: &Path,
    ) -> Result<TlsPaths, DevCertError> {
        validity.check()?;
        let mut params = CertificateParams::default();
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity {
            Identity::Peer(_) => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        let paths =
            TlsPaths { ca: ca.to_owned(), cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
        write_file(&paths.key, key.serialize_pem().as_bytes(), true)?;
        write_file(&paths.cert, cert.pem().as_bytes(), false)?;
        Ok(paths)
    }
}

impl DevCa {
    /// Writes a certificate revocation list signed by this CA to `path` (PEM, `X509 CRL`),
    /// listing the leaf certificates of the PEM files `revoked` (reason: key compromise). Valid
    /// from a minute ago for [`DEV_VALIDITY`]. Give the file to the nodes as `tls.crls`.
    pub fn revocation_list(&self, revoked: &[&Path], path: &Path) -> Result<(), DevCertError> {
        let now = SystemTime::now();
        let mut revoked_certs = Vec::new();
        for cert in revoked {
            let read_err = |what: String| DevCertError::Read { path: cert.to_path_buf(), what };
            let der = CertificateDer::from_pem_file(cert).map_err(|e| read_err(e.to_string()))?;
            let serial = crate::der::serial(&der).ok_or_else(|| read_err("no serial number".into()))?;
            // DER adds a zero octet before a serial whose top bit is set; rcgen adds it back.
            let serial = match serial {
                [0, rest @ ..] if rest.first().is_some_and(|b| b & 0x80 != 0) => rest,
                s => s,
            };
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: now.into(),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let number = now.duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let params = CertificateRevocationListParams {
            this_update: (now - Duration::from_secs(60)).into(),
            next_update: (now + DEV_VALIDITY).into(),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&Issuer::from_params(&self.params, &self.key))?;
        write_file(path, crl.pem()?.as_bytes(), false)
    }
}

/// What [`generate`] wrote.
#[derive(Debug)]
pub struct DevCerts {
    /// The CA certificate (the bundle every endpoint trusts).
    pub ca: PathBuf,
    /// Each node's files.
    pub nodes: BTreeMap<NodeId, TlsPaths>,
    /// Each client's files.
    pub clients: BTreeMap<Principal, TlsPaths>,
    /// The CA, to issue more certificates.
    pub authority: DevCa,
}

/// Writes a dev CA (`ca.crt`, `ca.key`), `node-<id>.{crt,key}` for every node and
/// `client-<principal>.{crt,key}` for every client into `dir` (created if missing), valid for
/// [`DEV_VALIDITY`].
pub fn generate(
    dir: &Path,
    cluster: &ClusterId,
    nodes: &[NodeId],
    clients: &[(Principal, Role)],
) -> Result<DevCerts, DevCertError> {
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write { path: dir.to_owned(), source })?;
    let validity = Validity::from_now(DEV_VALIDITY);
    let authority = DevCa::new(cluster, validity)?;
    let ca = dir.join("ca.crt");
    write_file(&ca, authority.pem.as_bytes(), false)?;
    write_file(&dir.join("ca.key"), authority.key.serialize_pem().as_bytes(), true)?;
    let mut node_paths = BTreeMap::new();
    for &node in nodes {
        let identity = Identity::peer(cluster.clone(), node);
        let paths = authority.issue(&identity, validity, dir, &format!("node-{node}"), &ca)?;
        node_paths.insert(node, paths);
    }
    let mut client_paths = BTreeMap::new();
    for (principal, role) in clients {
        let identity = Identity::client(cluster.clone(), principal.clone(), *role);
        let name = format!("client-{principal}");
        let paths = authority.issue(&identity, validity, dir, &name, &ca)?;
        client_paths.insert(principal.clone(), paths);
    }
    Ok(DevCerts { ca, nodes: node_paths, clients: client_paths, authority })
}

/// Writes through a temporary file and a rename, so a watcher never reads half a file.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), DevCertError> {
    let err = |source| DevCertError::Write { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}
