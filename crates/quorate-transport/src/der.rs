//! Just enough DER to read a certificate's validity period (for the expiry gauge and the
//! expiry of open connections) and its serial number (for development revocation lists);
//! chain and name checks are rustls-webpki's job. Never panics on any input (the fuzz target
//! `der_decode`); compiled without the `net` feature so that it can be fuzzed cheaply.

/// A DER element: its tag, its contents and the bytes after it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The fields of an X.509 certificate's `TBSCertificate` in DER from its `skip`-th on (after
/// the optional `[0] EXPLICIT` version): 0 is serialNumber, 3 validity, 4 subject.
fn tbs_field(cert: &[u8], skip: usize) -> Option<&[u8]> {
    let (tag, cert, _) = element(cert)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, mut tbs, _) = element(cert)?;
    (tag == SEQUENCE).then_some(())?;
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    for _ in 0..skip {
        tbs = element(tbs)?.2;
    }
    Some(tbs)
}

/// `(not_before, not_after)` of an X.509 certificate in DER, as Unix seconds.
#[must_use]
pub fn validity_unix(cert: &[u8]) -> Option<(i64, i64)> {
    // serialNumber, signature, issuer, then validity.
    let (tag, validity, _) = element(tbs_field(cert, 3)?)?;
    (tag == SEQUENCE).then_some(())?;
    let (t1, not_before, rest) = element(validity)?;
    let (t2, not_after, _) = element(rest)?;
    Some((time_unix(t1, not_before)?, time_unix(t2, not_after)?))
}

/// The content octets of an X.509 certificate's serial number (DER).
#[cfg(feature = "dev-certs")]
pub(crate) fn serial(cert: &[u8]) -> Option<&[u8]> {
    const INTEGER: u8 = 0x02;
    let (tag, cert, _) = element(cert)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, mut tbs, _) = element(cert)?;
    (tag == SEQUENCE).then_some(())?;
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    let (tag, serial, _) = element(tbs)?;
    (tag == INTEGER).then_some(serial)
}

/// The contents of an X.509 certificate's issuer and subject names (DER, inside their
/// `SEQUENCE`), as rustls-webpki gives a revocation list's issuer: equal bytes, same name.
#[cfg(feature = "dev-certs")]
pub(crate) fn issuer_and_subject(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let name = |skip| {
        let (tag, name, _) = element(tbs_field(cert, skip)?)?;
        (tag == SEQUENCE).then_some(name)
    };
    // serialNumber, signature, then issuer; validity, then subject.
    Some((name(2)?, name(4)?))
}

/// The parts of a signed X.509 structure (a certificate or a revocation list: `SEQUENCE {
/// tbs, signatureAlgorithm, signatureValue }`): the signed bytes (the whole `tbs` element),
/// the signature algorithm identifier's contents, and the signature.
#[cfg(feature = "dev-certs")]
pub(crate) fn signed_parts(der: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    const BIT_STRING: u8 = 0x03;
    let (tag, signed, _) = element(der)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, _, rest) = element(signed)?;
    (tag == SEQUENCE).then_some(())?;
    let tbs = &signed[..signed.len() - rest.len()];
    let (tag, algorithm, rest) = element(rest)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, bits, _) = element(rest)?;
    (tag == BIT_STRING).then_some(())?;
    let (&unused, signature) = bits.split_first()?;
    (unused == 0).then_some((tbs, algorithm, signature))
}

/// A `SubjectPublicKeyInfo`'s contents (as rustls-webpki gives a trust anchor's): the key
/// algorithm identifier's contents and the key.
#[cfg(feature = "dev-certs")]
pub(crate) fn spki_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    const BIT_STRING: u8 = 0x03;
    let (tag, algorithm, rest) = element(spki)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, bits, _) = element(rest)?;
    (tag == BIT_STRING).then_some(())?;
    let (&unused, key) = bits.split_first()?;
    (unused == 0).then_some((algorithm, key))
}

/// Most attributes read from a CA's subject name.
#[cfg(feature = "dev-certs")]
const NAME_ATTRIBUTES_MAX: usize = 32;
/// Most arcs read from an object identifier.
#[cfg(feature = "dev-certs")]
const OID_ARCS_MAX: usize = 32;
/// Most extensions read from a CA certificate.
#[cfg(feature = "dev-certs")]
const EXTENSIONS_MAX: usize = 64;

/// What issuing certificates from a CA certificate needs from it.
#[cfg(feature = "dev-certs")]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CaParts<'a> {
    /// The subject name, one `(attribute type OID arcs, string tag, string bytes)` per
    /// relative distinguished name, in order (issued certificates name it as their issuer).
    pub(crate) subject: Vec<(Vec<u64>, u8, &'a [u8])>,
    /// The subject key identifier, if the certificate has one.
    pub(crate) key_id: Option<&'a [u8]>,
    /// Whether the key usage allows signing certificates (`None`: no key usage extension).
    pub(crate) cert_sign: Option<bool>,
    /// Whether the basic constraints say it is a CA (`false` when absent).
    pub(crate) is_ca: bool,
}

/// The parts of a CA certificate (DER) that issuing from it needs; `None` for anything that
/// is not a certificate of that shape (including a subject with a multi-valued RDN or more
/// than [`NAME_ATTRIBUTES_MAX`] attributes).
#[cfg(feature = "dev-certs")]
pub(crate) fn ca_parts(cert: &[u8]) -> Option<CaParts<'_>> {
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    const BIT_STRING: u8 = 0x03;
    const BOOLEAN: u8 = 0x01;
    const EXTENSIONS: u8 = 0xa3;
    // serialNumber, signature, issuer, validity, then subject.
    let (tag, mut name, rest) = element(tbs_field(cert, 4)?)?;
    (tag == SEQUENCE).then_some(())?;
    let mut subject = Vec::new();
    while !name.is_empty() {
        let (tag, rdn, next) = element(name)?;
        (tag == SET && subject.len() < NAME_ATTRIBUTES_MAX).then_some(())?;
        let (tag, attribute, after) = element(rdn)?;
        (tag == SEQUENCE && after.is_empty()).then_some(())?;
        let (tag, oid_bytes, value) = element(attribute)?;
        (tag == OID).then_some(())?;
        let (value_tag, value, after) = element(value)?;
        after.is_empty().then_some(())?;
        subject.push((oid(oid_bytes)?, value_tag, value));
        name = next;
    }
    // subjectPublicKeyInfo, then optional unique ids and the extensions.
    let mut tbs = element(rest)?.2;
    let (mut key_id, mut cert_sign, mut is_ca) = (None, None, false);
    while !tbs.is_empty() {
        let (tag, content, next) = element(tbs)?;
        tbs = next;
        if tag != EXTENSIONS {
            continue;
        }
        let (tag, mut extensions, _) = element(content)?;
        (tag == SEQUENCE).then_some(())?;
        for _ in 0..EXTENSIONS_MAX {
            if extensions.is_empty() {
                break;
            }
            let (tag, extension, next) = element(extensions)?;
            (tag == SEQUENCE).then_some(())?;
            extensions = next;
            let (tag, id, mut rest) = element(extension)?;
            (tag == OID).then_some(())?;
            if rest.first() == Some(&BOOLEAN) {
                rest = element(rest)?.2;
            }
            let (tag, value, _) = element(rest)?;
            (tag == OCTET_STRING).then_some(())?;
            match id {
                // 2.5.29.14 subjectKeyIdentifier: OCTET STRING.
                [0x55, 0x1d, 0x0e] => {
                    let (tag, id, _) = element(value)?;
                    (tag == OCTET_STRING).then_some(())?;
                    key_id = Some(id);
                }
                // 2.5.29.15 keyUsage: BIT STRING, keyCertSign is bit 5.
                [0x55, 0x1d, 0x0f] => {
                    let (tag, bits, _) = element(value)?;
                    (tag == BIT_STRING).then_some(())?;
                    cert_sign = Some(bits.get(1).is_some_and(|b| b & 0x04 != 0));
                }
                // 2.5.29.19 basicConstraints: SEQUENCE { cA BOOLEAN DEFAULT FALSE, ... }.
                [0x55, 0x1d, 0x13] => {
                    let (tag, constraints, _) = element(value)?;
                    (tag == SEQUENCE).then_some(())?;
                    is_ca = matches!(element(constraints), Some((BOOLEAN, [b], _)) if *b != 0);
                }
                _ => {}
            }
        }
    }
    Some(CaParts { subject, key_id, cert_sign, is_ca })
}

/// The arcs of an object identifier's content octets.
#[cfg(feature = "dev-certs")]
fn oid(bytes: &[u8]) -> Option<Vec<u64>> {
    let mut arcs = Vec::new();
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        (value >> 57 == 0).then_some(())?;
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - 40 * first);
            } else {
                arcs.push(value);
            }
            (arcs.len() <= OID_ARCS_MAX).then_some(())?;
            value = 0;
        } else if i + 1 == bytes.len() {
            return None;
        }
    }
    (!arcs.is_empty()).then_some(arcs)
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` to Unix seconds.
fn time_unix(tag: u8, text: &[u8]) -> Option<i64> {
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    let valid = (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && minute < 60 && second < 61;
    valid.then_some(())?;
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(text: &[u8]) -> Option<i64> {
    text.iter().try_fold(0i64, |acc, b| b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0')))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time_unix(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(time_unix(GENERALIZED_TIME, b"20000301000000Z"), Some(951_868_800));
        assert_eq!(time_unix(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(time_unix(UTC_TIME, b"7001010000001"), None);
        assert_eq!(time_unix(UTC_TIME, b"701301000000Z"), None);
    }

    #[cfg(feature = "dev-certs")]
    #[test]
    fn object_identifiers() {
        assert_eq!(oid(&[0x55, 0x04, 0x03]), Some(vec![2, 5, 4, 3]));
        assert_eq!(oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]), Some(vec![1, 2, 840, 113_549]));
        assert_eq!(oid(&[0x55, 0x84]), None, "a truncated arc");
        assert_eq!(oid(&[]), None);
        assert_eq!(oid(&[0xff; 12]), None, "an arc past 64 bits");
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x1234_5678_u64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x.is_multiple_of(5) { 0x30 } else { x as u8 }
                })
                .collect();
            let _ = validity_unix(&bytes);
            #[cfg(feature = "dev-certs")]
            let _ = ca_parts(&bytes);
        }
    }
}
