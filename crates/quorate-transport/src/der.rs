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

/// `(not_before, not_after)` of an X.509 certificate in DER, as Unix seconds.
#[must_use]
pub fn validity_unix(cert: &[u8]) -> Option<(i64, i64)> {
    let (tag, cert, _) = element(cert)?;
    (tag == SEQUENCE).then_some(())?;
    let (tag, mut tbs, _) = element(cert)?;
    (tag == SEQUENCE).then_some(())?;
    // [0] EXPLICIT version, optional.
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        tbs = element(tbs)?.2;
    }
    let (tag, validity, _) = element(tbs)?;
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
        }
    }
}
