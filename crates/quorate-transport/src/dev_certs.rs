//! Development certificates: a local cluster CA plus node and client certificates with the
//! right `quorate://` URI SANs, written as PEM files. For first runs, demos and tests — not
//! for production (the CA key is written next to the certificates).

use crate::identity::{ClusterId, Identity, Principal, Role};
use crate::tls::TlsPaths;
use quorate_log::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Default validity of development certificates.
pub const DEV_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest validity of a certificate issued by a [`DevCa`] (the CA/Browser Forum's limit for
/// leaf certificates).
pub const VALIDITY_MAX: Duration = Duration::from_secs(398 * 24 * 3600);
/// Longest validity of a CA made by [`DevCa::new`] (ten years).
pub const CA_VALIDITY_MAX: Duration = Duration::from_secs(3653 * 24 * 3600);

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
    /// A validity period that is empty or longer than [`VALIDITY_MAX`] ([`CA_VALIDITY_MAX`]
    /// for a CA).
    #[error("invalid validity period")]
    Validity,
    /// A CA certificate or key that cannot be used to issue certificates.
    #[error("cannot use the CA in {path}: {what}")]
    Ca {
        /// The CA certificate or key file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A certificate to revoke could not be read.
    #[error("cannot read certificate {path}: {what}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// An existing revocation list cannot be updated: unreadable, not a CRL, another CA's,
    /// or full.
    #[error("cannot update the revocation list {path}: {what}")]
    Crl {
        /// The revocation list file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
}

/// Most certificates one revocation list written by [`DevCa::update_revocation_list`] lists
/// (about 40 bytes each: far below the 16 MiB a node reads of one file).
pub const REVOKED_MAX: usize = 100_000;

/// A certificate a revocation list names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial number, big-endian, without leading zero octets.
    pub serial: Vec<u8>,
    /// When it was revoked, Unix seconds.
    pub revoked_unix: i64,
}

/// What [`DevCa::update_revocation_list`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    /// Every certificate the new list names, the earlier entries first.
    pub revoked: Vec<Revoked>,
    /// The serial numbers this update added (those already listed are not added twice).
    pub added: Vec<Vec<u8>>,
    /// The list's `nextUpdate`, Unix seconds (nodes keep using a list past it; publish a new
    /// one before then for other verifiers).
    pub next_update_unix: i64,
}

/// A serial number as a revocation list names it: big-endian, without the leading zero octets
/// DER may put before it (at least one octet).
#[must_use]
pub fn normalize_serial(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|&b| b != 0).unwrap_or(serial.len().saturating_sub(1));
    serial[start..].to_vec()
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

    fn check(&self, max: Duration) -> Result<(), DevCertError> {
        match self.not_after.duration_since(self.not_before) {
            Ok(d) if !d.is_zero() && d <= max => Ok(()),
            _ => Err(DevCertError::Validity),
        }
    }
}

/// A development certificate authority, held in memory, that can issue more certificates
/// (rotations, and the odd certificate tests need: expired, wrong node, wrong cluster).
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    /// `(not_before, not_after)` of the CA certificate, Unix seconds.
    validity_unix: (i64, i64),
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA for `cluster` (the name only goes into the subject).
    pub fn new(cluster: &ClusterId, validity: Validity) -> Result<DevCa, DevCertError> {
        validity.check(CA_VALIDITY_MAX)?;
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
        let validity_unix = (unix(validity.not_before), unix(validity.not_after));
        Ok(DevCa { issuer: Issuer::new(params, key), pem, validity_unix })
    }

    /// An existing CA: its certificate (PEM; the first certificate of the file is the issuer)
    /// and its private key (PEM: PKCS#8, SEC1 or PKCS#1; ECDSA P-256/P-384, Ed25519 or RSA).
    /// Nothing is written. Refused, with the file and the reason, when either file is missing
    /// or not PEM, when the key is not the certificate's key, when the certificate is not valid
    /// now, when it is not a CA (basic constraints) or when its key usage does not allow
    /// signing certificates.
    pub fn load(cert: &Path, key: &Path) -> Result<DevCa, DevCertError> {
        let ca_err = |path: &Path, what: String| DevCertError::Ca { path: path.to_path_buf(), what };
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| ca_err(path, format!("cannot read it as text: {e}")))
        };
        let cert_text = read(cert)?;
        let der = CertificateDer::pem_slice_iter(cert_text.as_bytes())
            .next()
            .ok_or_else(|| ca_err(cert, "no PEM CERTIFICATE in it".into()))?
            .map_err(|e| ca_err(cert, format!("not a PEM certificate: {e}")))?;
        let key_pair =
            KeyPair::from_pem(&read(key)?).map_err(|e| ca_err(key, format!("not a usable PEM private key: {e}")))?;
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| ca_err(cert, format!("not a parsable X.509 certificate: {e}")))?;
        if webpki::spki_for_anchor(&anchor).as_ref() != key_pair.subject_public_key_info().as_slice() {
            return Err(ca_err(key, format!("this is not the private key of {}", cert.display())));
        }
        let validity_unix =
            crate::der::validity_unix(&der).ok_or_else(|| ca_err(cert, "its validity period cannot be read".into()))?;
        let now = unix(SystemTime::now());
        if now < validity_unix.0 || now >= validity_unix.1 {
            return Err(ca_err(
                cert,
                format!(
                    "it is not valid now (valid from {} to {} in Unix seconds, now {now})",
                    validity_unix.0, validity_unix.1
                ),
            ));
        }
        let parts = crate::der::ca_parts(&der).ok_or_else(|| {
            ca_err(cert, "its subject name or extensions cannot be read (a multi-valued name is not supported)".into())
        })?;
        if !parts.is_ca {
            return Err(ca_err(cert, "it is not a CA certificate (basic constraints without CA:TRUE)".into()));
        }
        if parts.cert_sign == Some(false) {
            return Err(ca_err(cert, "its key usage does not include keyCertSign".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = subject_name(&parts.subject).map_err(|what| ca_err(cert, what))?;
        if let Some(id) = parts.key_id {
            params.key_identifier_method = KeyIdMethod::PreSpecified(id.to_vec());
        }
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = Issuer::new(params, key_pair);
        Ok(DevCa { issuer, pem: cert_text, validity_unix })
    }

    /// `(not_before, not_after)` of the CA certificate, Unix seconds: nothing it issues is
    /// accepted after `not_after`.
    #[must_use]
    pub fn validity_unix(&self) -> (i64, i64) {
        self.validity_unix
    }

    /// The CA certificate, PEM (for a CA from [`DevCa::load`], the text of its file).
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
        validity.check(VALIDITY_MAX)?;
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
        let cert = params.signed_by(&key, &self.issuer)?;
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
        let crl = params.signed_by(&self.issuer)?;
        write_file(path, crl.pem()?.as_bytes(), false)
    }
}

/// What a certificate or list must match to be this CA's: its name and its public key.
struct CaKey {
    /// The subject name (the contents of its DER `SEQUENCE`).
    subject: Vec<u8>,
    /// The `SubjectPublicKeyInfo` contents.
    spki: Vec<u8>,
}

impl CaKey {
    /// Whether `der` (a certificate or a revocation list) names this CA as its issuer
    /// (`issuer`) and carries a valid signature by its key. Names alone do not tell two CAs
    /// apart: a rotation's new CA often has the old one's name.
    fn signed(&self, der: &[u8], issuer: &[u8]) -> bool {
        if issuer != self.subject.as_slice() {
            return false;
        }
        let (Some((tbs, algorithm, signature)), Some((key_algorithm, key))) =
            (crate::der::signed_parts(der), crate::der::spki_parts(&self.spki))
        else {
            return false;
        };
        crate::tls::provider().signature_verification_algorithms.all.iter().any(|alg| {
            alg.signature_alg_id().as_ref() == algorithm
                && alg.public_key_alg_id().as_ref() == key_algorithm
                && alg.verify_signature(key, tbs, signature).is_ok()
        })
    }
}

impl DevCa {
    /// The CA certificate's name and key.
    fn key(&self) -> Result<CaKey, DevCertError> {
        let bad = |what: &str| DevCertError::Ca { path: PathBuf::from("(the CA certificate)"), what: what.into() };
        let der = CertificateDer::pem_slice_iter(self.pem.as_bytes())
            .next()
            .ok_or_else(|| bad("no PEM CERTIFICATE"))?
            .map_err(|_| bad("not a PEM certificate"))?;
        let (_, subject) = crate::der::issuer_and_subject(&der).ok_or_else(|| bad("its subject cannot be read"))?;
        let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|_| bad("not a parsable X.509 certificate"))?;
        Ok(CaKey { subject: subject.to_vec(), spki: anchor.subject_public_key_info.as_ref().to_vec() })
    }

    /// Writes the revocation list `path` signed by this CA: the certificates the list at
    /// `path` already names (when the file exists: PEM or DER, from this CA — by rcgen,
    /// openssl or any other tool), plus the certificates of the PEM files `certs` (each must
    /// be issued by this CA) and the serial numbers `serials` (big-endian), revoked now
    /// (reason: key compromise). Valid from a minute ago for `validity`. Written through a
    /// temporary file and a rename: nodes watching `path` (`tls.crls`) never read half of it.
    /// Refused, with the reason, for an unreadable list or one this CA did not sign, a
    /// certificate this CA did not sign (the issuer's name and the signature are checked), or
    /// more than [`REVOKED_MAX`] entries.
    pub fn update_revocation_list(
        &self,
        path: &Path,
        certs: &[&Path],
        serials: &[Vec<u8>],
        validity: Duration,
    ) -> Result<RevocationList, DevCertError> {
        let crl_err = |what: String| DevCertError::Crl { path: path.to_path_buf(), what };
        let ca = self.key()?;
        let now = SystemTime::now();
        let mut entries: Vec<RevokedCertParams> = Vec::new();
        let mut revoked: Vec<Revoked> = Vec::new();
        if path.exists() {
            let ders = crate::tls::read_crls(path).map_err(|e| crl_err(e.to_string()))?;
            for der in &ders {
                let parse = || {
                    webpki::BorrowedCertRevocationList::from_der(der)
                        .map_err(|e| crl_err(format!("not a revocation list rustls-webpki accepts: {e}")))
                };
                if !ca.signed(der, webpki::CertRevocationList::from(parse()?).issuer()) {
                    return Err(crl_err(
                        "it holds a list not signed by this CA (another CA's); give each CA its own file".into(),
                    ));
                }
                let list = parse()?;
                for entry in &list {
                    let entry = entry.map_err(|e| crl_err(format!("an entry cannot be read: {e}")))?;
                    let serial = normalize_serial(entry.serial_number);
                    if revoked.iter().any(|r| r.serial == serial) {
                        continue;
                    }
                    if revoked.len() >= REVOKED_MAX {
                        return Err(crl_err(format!("it lists more than {REVOKED_MAX} certificates")));
                    }
                    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(entry.revocation_date.as_secs());
                    revoked.push(Revoked { serial: serial.clone(), revoked_unix: unix(when) });
                    entries.push(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&serial),
                        revocation_time: when.into(),
                        reason_code: entry.reason_code.map(rcgen_reason),
                        invalidity_date: entry
                            .invalidity_date
                            .map(|t| (SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_secs())).into()),
                    });
                }
            }
        }
        let mut new_serials = Vec::new();
        for cert in certs {
            let read_err = |what: String| DevCertError::Read { path: cert.to_path_buf(), what };
            let der = CertificateDer::from_pem_file(cert).map_err(|e| read_err(e.to_string()))?;
            let (issuer, _) =
                crate::der::issuer_and_subject(&der).ok_or_else(|| read_err("its issuer cannot be read".into()))?;
            if !ca.signed(&der, issuer) {
                return Err(read_err("it was not issued by this CA".into()));
            }
            let serial = crate::der::serial(&der).ok_or_else(|| read_err("no serial number".into()))?;
            new_serials.push(normalize_serial(serial));
        }
        new_serials.extend(serials.iter().map(|s| normalize_serial(s)));
        let mut added = Vec::new();
        for serial in new_serials {
            if serial.is_empty() || revoked.iter().any(|r| r.serial == serial) {
                continue;
            }
            if revoked.len() >= REVOKED_MAX {
                return Err(crl_err(format!("it would list more than {REVOKED_MAX} certificates")));
            }
            revoked.push(Revoked { serial: serial.clone(), revoked_unix: unix(now) });
            entries.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: now.into(),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
            added.push(serial);
        }
        // Milliseconds since 1970: increases from one list to the next (RFC 5280 asks for a
        // monotonically increasing number), and stays above the small numbers openssl counts.
        let number = now.duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let next_update = now + validity;
        let params = CertificateRevocationListParams {
            this_update: (now - Duration::from_secs(60)).into(),
            next_update: next_update.into(),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        write_file(path, crl.pem()?.as_bytes(), false)?;
        Ok(RevocationList { revoked, added, next_update_unix: unix(next_update) })
    }
}

/// rustls-webpki's revocation reason as rcgen's.
fn rcgen_reason(reason: webpki::RevocationReason) -> RevocationReason {
    use webpki::RevocationReason as W;
    match reason {
        W::Unspecified => RevocationReason::Unspecified,
        W::KeyCompromise => RevocationReason::KeyCompromise,
        W::CaCompromise => RevocationReason::CaCompromise,
        W::AffiliationChanged => RevocationReason::AffiliationChanged,
        W::Superseded => RevocationReason::Superseded,
        W::CessationOfOperation => RevocationReason::CessationOfOperation,
        W::CertificateHold => RevocationReason::CertificateHold,
        W::RemoveFromCrl => RevocationReason::RemoveFromCrl,
        W::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        W::AaCompromise => RevocationReason::AaCompromise,
    }
}

/// A CA certificate's subject as rcgen names it, attribute by attribute with the same string
/// types, so that issued certificates name their issuer byte for byte as the CA names itself
/// (that is how a verifier finds the issuer).
fn subject_name(attributes: &[(Vec<u64>, u8, &[u8])]) -> Result<DistinguishedName, String> {
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    const TELETEX_STRING: u8 = 0x14;
    const IA5_STRING: u8 = 0x16;
    let mut dn = DistinguishedName::new();
    for (oid, tag, bytes) in attributes {
        let text = || String::from_utf8(bytes.to_vec()).map_err(|_| format!("subject attribute {oid:?} is not text"));
        let bad = |e: rcgen::Error| format!("subject attribute {oid:?}: {e}");
        let value = match *tag {
            UTF8_STRING => DnValue::Utf8String(text()?),
            PRINTABLE_STRING => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            TELETEX_STRING => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            IA5_STRING => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            other => {
                return Err(format!("subject attribute {oid:?} has a string type (tag {other:#04x}) not supported"));
            }
        };
        let ty = DnType::CustomDnType(oid.clone());
        if dn.get(&ty).is_some() {
            return Err(format!("subject attribute {oid:?} appears twice; not supported"));
        }
        dn.push(ty, value);
    }
    Ok(dn)
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
/// `client-<principal>.{crt,key}` for every client into `dir` (created if missing), all valid
/// for [`DEV_VALIDITY`].
pub fn generate(
    dir: &Path,
    cluster: &ClusterId,
    nodes: &[NodeId],
    clients: &[(Principal, Role)],
) -> Result<DevCerts, DevCertError> {
    let validity = Validity::from_now(DEV_VALIDITY);
    generate_with_validity(dir, cluster, nodes, clients, validity, validity)
}

/// Like [`generate`], with the CA valid for `ca_validity` and the node and client
/// certificates for `validity` (which must end no later than the CA).
pub fn generate_with_validity(
    dir: &Path,
    cluster: &ClusterId,
    nodes: &[NodeId],
    clients: &[(Principal, Role)],
    ca_validity: Validity,
    validity: Validity,
) -> Result<DevCerts, DevCertError> {
    if validity.not_after > ca_validity.not_after {
        return Err(DevCertError::Validity);
    }
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write { path: dir.to_owned(), source })?;
    let authority = DevCa::new(cluster, ca_validity)?;
    let ca = dir.join("ca.crt");
    write_file(&ca, authority.pem.as_bytes(), false)?;
    write_file(&dir.join("ca.key"), authority.issuer.key().serialize_pem().as_bytes(), true)?;
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

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Credentials;

    /// A scratch directory, removed on drop.
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("quorate-devca-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn node(n: u64) -> NodeId {
        NodeId::new(n).unwrap()
    }

    #[test]
    fn a_loaded_ca_issues_certificates_that_chain_to_the_same_bundle() {
        let dir = scratch("load");
        let cluster = ClusterId::new("loaded").unwrap();
        let day = Duration::from_secs(86_400);
        let ca_validity = Validity::from_now(100 * day);
        let made =
            generate_with_validity(&dir.0, &cluster, &[node(1)], &[], ca_validity, Validity::from_now(day)).unwrap();
        let ca_before = std::fs::read(&made.ca).unwrap();
        let ca = DevCa::load(&made.ca, &dir.0.join("ca.key")).unwrap();
        assert_eq!(ca.validity_unix(), made.authority.validity_unix(), "the validity read back from the file");
        assert_eq!(ca.validity_unix().1, unix(ca_validity.not_after));
        let four = Identity::peer(cluster.clone(), node(4));
        let paths = ca.issue(&four, Validity::from_now(2 * day), &dir.0, "node-4", &made.ca).unwrap();
        let creds = Credentials::load(paths).unwrap();
        assert_eq!(creds.identity(), four);
        creds.check_usable().unwrap();
        // The days asked for, not the CA's.
        let left = creds.seconds_until_earliest_expiry();
        assert!((2 * 86_400 - 60..=2 * 86_400).contains(&left), "{left}");
        assert_eq!(std::fs::read(&made.ca).unwrap(), ca_before, "loading never rewrites the CA");
    }

    #[test]
    fn a_ca_made_elsewhere_with_a_longer_name_issues_certificates_that_verify() {
        let dir = scratch("foreign");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, DnValue::PrintableString("NL".try_into().unwrap()));
        dn.push(DnType::OrganizationName, "Example B.V.");
        dn.push(
            DnType::CustomDnType(vec![0, 9, 2342, 19_200_300, 100, 1, 25]),
            DnValue::Ia5String("example".try_into().unwrap()),
        );
        dn.push(DnType::CommonName, "Example Root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let (ca_crt, ca_key) = (dir.0.join("root.pem"), dir.0.join("root-key.pem"));
        write_file(&ca_crt, ca.pem().as_bytes(), false).unwrap();
        write_file(&ca_key, key.serialize_pem().as_bytes(), true).unwrap();
        let loaded = DevCa::load(&ca_crt, &ca_key).unwrap();
        let cluster = ClusterId::new("elsewhere").unwrap();
        for (identity, name) in [
            (Identity::peer(cluster.clone(), node(7)), "node-7"),
            (Identity::client(cluster.clone(), Principal::new("app").unwrap(), Role::Write), "client-app"),
        ] {
            let paths =
                loaded.issue(&identity, Validity::from_now(Duration::from_secs(3600)), &dir.0, name, &ca_crt).unwrap();
            let creds = Credentials::load(paths).unwrap();
            creds.check_usable().unwrap();
            assert_eq!(creds.identity(), identity);
        }
    }

    /// Sets `path`'s modification time.
    fn set_mtime(path: &Path, t: SystemTime) {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn a_replaced_file_is_seen_though_its_modification_time_is_the_one_a_failed_reload_saw() {
        // File times are coarse (a clock tick of a few ms): a rotation written right after a
        // refused one can carry the same times. The watcher saw the refused pair (a key for
        // one certificate, the certificate of another), recorded its times as failed, and
        // then never looked at the good pair that replaced it with equal times — the transport
        // test `rotated_certificate_is_served_after_reload_without_restart` timed out so.
        let dir = scratch("stamps");
        let cluster = ClusterId::new("stamps").unwrap();
        let made = generate(&dir.0, &cluster, &[node(1)], &[]).unwrap();
        let ca = DevCa::load(&made.ca, &dir.0.join("ca.key")).unwrap();
        let paths = made.nodes[&node(1)].clone();
        let creds = Credentials::load(paths.clone()).unwrap();
        let t = SystemTime::now() + Duration::from_secs(5);
        // Another identity's certificate and key, written at `t`: refused.
        let other = Identity::peer(cluster.clone(), node(2));
        ca.issue(&other, Validity::from_now(Duration::from_secs(86_400)), &dir.0, "node-1", &made.ca).unwrap();
        set_mtime(&paths.cert, t);
        set_mtime(&paths.key, t);
        assert!(creds.reload_if_changed().is_err(), "another identity is refused");
        assert!(!creds.reload_if_changed().unwrap(), "the same refused files are not retried");
        // This node's new certificate and key replace them, with the same times.
        let me = Identity::peer(cluster, node(1));
        ca.issue(&me, Validity::from_now(Duration::from_secs(86_400)), &dir.0, "node-1", &made.ca).unwrap();
        set_mtime(&paths.cert, t);
        set_mtime(&paths.key, t);
        assert!(creds.reload_if_changed().unwrap(), "the replaced files are loaded");
        assert_eq!(creds.reload_count(), 1);
    }

    #[test]
    fn a_file_rewritten_in_place_with_its_length_and_time_is_seen() {
        // An editor or a config tool that rewrites a file in place (same inode) with content of
        // the same length, within one tick of the file clock, leaves time, length and inode as
        // they were: only the content tells the versions apart.
        let dir = scratch("inplace");
        let cluster = ClusterId::new("inplace").unwrap();
        let made = generate(&dir.0, &cluster, &[node(1)], &[]).unwrap();
        let paths = made.nodes[&node(1)].clone();
        let creds = Credentials::load(paths.clone()).unwrap();
        let before = std::fs::metadata(&paths.cert).unwrap();
        let good = std::fs::read(&paths.cert).unwrap();
        let garbled: Vec<u8> = good.iter().map(|b| if b.is_ascii_alphabetic() { b'A' } else { *b }).collect();
        assert_eq!(garbled.len(), good.len());
        assert_ne!(garbled, good);
        let write_in_place = |bytes: &[u8]| {
            use std::io::Write;
            let mut f = std::fs::File::options().write(true).open(&paths.cert).unwrap();
            f.write_all(bytes).unwrap();
            f.set_modified(before.modified().unwrap()).unwrap();
        };
        write_in_place(&garbled);
        let after = std::fs::metadata(&paths.cert).unwrap();
        assert_eq!(
            (after.modified().unwrap(), after.len(), std::os::unix::fs::MetadataExt::ino(&after)),
            (before.modified().unwrap(), before.len(), std::os::unix::fs::MetadataExt::ino(&before)),
            "the test must leave time, length and inode as they were"
        );
        assert!(creds.reload_if_changed().is_err(), "the garbled certificate is seen and refused");
        assert!(!creds.reload_if_changed().unwrap(), "the same refused file is not retried");
        // Put back in place: the content is the loaded one again, nothing to reload.
        write_in_place(&good);
        assert!(!creds.reload_if_changed().unwrap(), "the content in use needs no reload");
        assert_eq!((creds.reload_count(), creds.reload_failures()), (0, 1));
    }

    #[test]
    fn a_revocation_list_is_updated_in_place_and_keeps_its_entries() {
        let dir = scratch("crl");
        let cluster = ClusterId::new("crl").unwrap();
        let writer = (Principal::new("w").unwrap(), Role::Write);
        let made = generate(&dir.0, &cluster, &[node(1), node(2)], std::slice::from_ref(&writer)).unwrap();
        let ca = DevCa::load(&made.ca, &dir.0.join("ca.key")).unwrap();
        let crl = dir.0.join("ca.crl");
        let usable = |paths: &TlsPaths| {
            Credentials::load_with_crls(paths.clone(), vec![crl.clone()])
                .unwrap()
                .check_usable()
                .map_err(|e| e.to_string())
        };
        // A new, empty list.
        let empty = ca.update_revocation_list(&crl, &[], &[], DEV_VALIDITY).unwrap();
        assert!(empty.revoked.is_empty() && empty.added.is_empty());
        usable(&made.nodes[&node(2)]).unwrap();
        // Node 2's certificate, then the writer's by serial number (as openssl prints it).
        let two = made.nodes[&node(2)].cert.as_path();
        let first = ca.update_revocation_list(&crl, &[two], &[], DEV_VALIDITY).unwrap();
        assert_eq!(first.revoked.len(), 1);
        let e = usable(&made.nodes[&node(2)]).unwrap_err();
        assert!(e.to_lowercase().contains("revoked"), "{e}");
        usable(&made.clients[&writer.0]).unwrap();
        let der = CertificateDer::from_pem_file(&made.clients[&writer.0].cert).unwrap();
        let mut serial = crate::der::serial(&der).unwrap().to_vec();
        serial.insert(0, 0); // leading zeros name the same number
        let second = ca.update_revocation_list(&crl, &[two], &[serial], DEV_VALIDITY).unwrap();
        assert_eq!(second.revoked.len(), 2, "node 2 kept, listed once: {second:?}");
        assert_eq!(second.revoked[0], first.revoked[0], "an earlier entry keeps its date");
        assert_eq!(second.added.len(), 1);
        assert!(usable(&made.clients[&writer.0]).unwrap_err().to_lowercase().contains("revoked"));
        assert!(usable(&made.nodes[&node(2)]).unwrap_err().to_lowercase().contains("revoked"));
        usable(&made.nodes[&node(1)]).unwrap();

        // Another CA's certificate, and another CA's list, are refused: that CA has the same
        // name (the same cluster), so its signature tells them apart.
        let other = generate(&dir.0.join("other"), &cluster, &[node(1)], &[]).unwrap();
        let m = ca.update_revocation_list(&crl, &[&other.nodes[&node(1)].cert], &[], DEV_VALIDITY).unwrap_err();
        assert!(m.to_string().contains("not issued by this CA"), "{m}");
        let m = other.authority.update_revocation_list(&crl, &[], &[], DEV_VALIDITY).unwrap_err();
        assert!(m.to_string().contains("another CA"), "{m}");
        // A file that is not a list is refused and left alone.
        let garbled = dir.0.join("garbled.crl");
        std::fs::write(&garbled, "not a list").unwrap();
        let m = ca.update_revocation_list(&garbled, &[], &[], DEV_VALIDITY).unwrap_err();
        assert!(m.to_string().contains("garbled.crl"), "{m}");
        assert_eq!(std::fs::read(&garbled).unwrap(), b"not a list");
        assert_eq!(normalize_serial(&[0, 0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(normalize_serial(&[0]), vec![0]);
    }

    #[test]
    fn an_unusable_ca_is_refused_with_the_reason() {
        let dir = scratch("bad");
        let cluster = ClusterId::new("bad").unwrap();
        let a = generate(&dir.0.join("a"), &cluster, &[], &[]).unwrap();
        let b = generate(&dir.0.join("b"), &cluster, &[], &[]).unwrap();
        let msg = |r: Result<DevCa, DevCertError>| r.unwrap_err().to_string();
        let m = msg(DevCa::load(&a.ca, &dir.0.join("b").join("ca.key")));
        assert!(m.contains("not the private key"), "{m}");
        let m = msg(DevCa::load(&dir.0.join("missing.crt"), &dir.0.join("a").join("ca.key")));
        assert!(m.contains("missing.crt") && m.contains("cannot read"), "{m}");
        let garbled = dir.0.join("garbled.crt");
        std::fs::write(&garbled, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let m = msg(DevCa::load(&garbled, &dir.0.join("a").join("ca.key")));
        assert!(m.contains("garbled.crt"), "{m}");
        std::fs::write(&garbled, "not pem at all").unwrap();
        let m = msg(DevCa::load(&garbled, &dir.0.join("a").join("ca.key")));
        assert!(m.contains("no PEM CERTIFICATE"), "{m}");
        let m = msg(DevCa::load(&b.ca, &garbled));
        assert!(m.contains("private key"), "{m}");
        // A CA that has expired.
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let old = DevCa::new(&cluster, Validity { not_before: now - 2 * hour, not_after: now - hour }).unwrap();
        let old_dir = dir.0.join("old");
        std::fs::create_dir_all(&old_dir).unwrap();
        write_file(&old_dir.join("ca.crt"), old.cert_pem().as_bytes(), false).unwrap();
        write_file(&old_dir.join("ca.key"), old.issuer.key().serialize_pem().as_bytes(), true).unwrap();
        let m = msg(DevCa::load(&old_dir.join("ca.crt"), &old_dir.join("ca.key")));
        assert!(m.contains("not valid now"), "{m}");
        // A leaf certificate is not a CA.
        let leaf = generate(&dir.0.join("leaf"), &cluster, &[node(1)], &[]).unwrap();
        let paths = &leaf.nodes[&node(1)];
        let m = msg(DevCa::load(&paths.cert, &paths.key));
        assert!(m.contains("not a CA certificate"), "{m}");
        // A leaf outliving its CA is refused by generate_with_validity.
        let short = Validity::from_now(hour);
        let long = Validity::from_now(2 * hour);
        assert!(matches!(
            generate_with_validity(&dir.0.join("c"), &cluster, &[], &[], short, long),
            Err(DevCertError::Validity)
        ));
    }
}
