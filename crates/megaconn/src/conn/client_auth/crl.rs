//! A client CA's certificate revocation list, checked when it is loaded
//! (`ClientCa::with_crl_*`, at `TlsConfig::client_auth` and each reload):
//! it reads as an X.509 CRL and, when its issuer is one of the client CA
//! roots, that root's key verifies its signature and the root may sign
//! CRLs (no `KeyUsage`, or one with `cRLSign`). webpki checks none of this
//! before a client's certificate
//! needs the CRL, and then fails that client's handshake: the server's own
//! bad list looked like a device refused, handshake after handshake. Here
//! it is a [`TlsError`] whose text says which file and what to do, and a
//! reload that reads one keeps the lists that worked. A CRL whose
//! `nextUpdate` has passed is only a warning: it still applies (webpki's
//! default, and what it does once running), so a CA that is late with its
//! next list does not stop the server from starting.
//!
//! A `nextUpdate` that passes while the server runs is warned of too, once
//! per CRL, at the first client certificate verified after it
//! ([`Watched`]: a clock comparison per verification, nothing per
//! connection).
//!
//! Read with yasna, as `tls.rs` reads a certificate's `notAfter` (rustls
//! and webpki parse a CRL but give none of this out); the signature is
//! checked with the ring provider's algorithms, the ones rustls verifies
//! client certificates with.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use yasna::{tags::TAG_UTCTIME, BERReader, Tag};

use crate::conn::tls::TlsError;

/// What the checks need of a CRL (RFC 5280, 5.1).
struct Crl {
    /// `tbsCertList`, whole: what the signature covers.
    tbs: Vec<u8>,
    /// The issuer's name (DER), as a certificate's subject is written.
    issuer: Vec<u8>,
    /// Seconds since the Unix epoch; `None` if the CRL has none.
    next_update: Option<i64>,
    /// `signatureAlgorithm`'s contents (no outer `SEQUENCE`), as rustls'
    /// algorithms name theirs.
    algorithm: Vec<u8>,
    signature: Vec<u8>,
}

/// What the checks need of a root: its subject and public key.
struct Root {
    subject: Vec<u8>,
    /// The key's `AlgorithmIdentifier` contents.
    key_algorithm: Vec<u8>,
    key: Vec<u8>,
    /// May sign CRLs: it has no `KeyUsage` extension, or one with
    /// `cRLSign` (bit 6), as webpki requires of a CRL's issuer.
    crl_sign: bool,
}

/// Checks `crl` (from `what`, a file's path or "the PEM given") against
/// the client CA `roots` at `now` (seconds since the Unix epoch); `Ok`
/// with its `nextUpdate` if that is still ahead (for [`Watched`]).
///
/// A CRL whose issuer is none of the roots may be an intermediate CA's
/// (devices send their intermediate, the server is not given it): its
/// signature cannot be checked here, and webpki checks it at each
/// handshake that needs it (counted `outcome="crl"`, logged naming the
/// file). A warning says so now.
pub(super) fn check(
    crl: &CertificateRevocationListDer<'_>,
    roots: &[CertificateDer<'_>],
    now: i64,
    what: &str,
) -> Result<Option<i64>, TlsError> {
    let Some(crl) = parse_crl(crl) else {
        return Err(TlsError::bad_crl(format!(
            "a CRL in {what} does not read as an X.509 CRL: give the client CA's CRL, PEM-encoded (`-----BEGIN X509 CRL-----`)"
        )));
    };
    let ahead = crl.next_update.filter(|&next| next > now);
    if let Some(next) = crl.next_update.filter(|&next| next <= now) {
        // Still used, as webpki uses it at handshakes (it does not enforce
        // nextUpdate): refusing it would stop every restart while the CA
        // is late, and the list still revokes what it names.
        tracing::warn!(
            crl = what,
            next_update = %date(next),
            "the CRL expired (its nextUpdate passed) and is still used: it may miss devices revoked since; fetch the CA's current CRL, then reload"
        );
    }
    let issuers: Vec<Root> = roots
        .iter()
        .filter_map(|c| parse_root(c))
        .filter(|root| root.subject == crl.issuer)
        .collect();
    if issuers.is_empty() {
        tracing::warn!(
            crl = what,
            "the CRL's issuer is none of the client CA roots: it applies only to devices whose certificate that CA (an intermediate the devices send) issued, and its signature is checked at their handshakes, not now"
        );
        return Ok(ahead);
    }
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let mut supported = false;
    for root in &issuers {
        for alg in algorithms.iter().filter(|alg| {
            alg.public_key_alg_id().as_ref() == root.key_algorithm
                && alg.signature_alg_id().as_ref() == crl.algorithm
        }) {
            supported = true;
            if alg
                .verify_signature(&root.key, &crl.tbs, &crl.signature)
                .is_ok()
            {
                // webpki refuses a CRL whose issuer may not sign CRLs, at
                // each handshake of that root's devices (`outcome="crl"`).
                return match root.crl_sign {
                    true => Ok(ahead),
                    false => Err(TlsError::bad_crl(format!(
                        "the CRL in {what} is signed by a client CA root whose KeyUsage lacks cRLSign, so every handshake of its devices would fail on it: have the CA reissue the root with the same key and the cRLSign key usage (its devices' certificates still chain to it) and give that root, or leave the CRL out"
                    ))),
                };
            }
        }
    }
    Err(TlsError::bad_crl(match supported {
        true => format!(
            "the CRL in {what} names a client CA root as its issuer, but that root's key does not verify its signature: it is another CA's of the same name, or was altered; fetch the CA's CRL again"
        ),
        false => format!(
            "the CRL in {what} is signed with an algorithm its issuer's key cannot verify here (rustls' ring provider): have the CA sign it with ECDSA, RSA or Ed25519"
        ),
    }))
}

/// rustls' client certificate verifier, watching the `nextUpdate`s of
/// CRLs that were still current when loaded: the first verification at or
/// after one logs a warning (once per CRL and load; an expired CRL still
/// applies, as at load). A CA late with its next list then shows in the
/// log while the server runs, not only at the next restart or reload.
///
/// Checked where rustls verifies a client's certificate, with the time
/// rustls verifies it at: only handshakes that use the CRLs pay, an atomic
/// load and a comparison each; no timer, nothing per connection.
pub(super) struct Watched {
    inner: Arc<dyn ClientCertVerifier>,
    /// `nextUpdate` (seconds since the Unix epoch) and where the CRL came
    /// from, earliest first.
    expiries: Box<[(i64, Box<str>)]>,
    /// How many of `expiries` were warned of.
    warned: AtomicUsize,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("expiries", &self.expiries)
            .field("warned", &self.warned)
            .finish_non_exhaustive()
    }
}

impl Watched {
    /// `inner`, watching `expiries` (`nextUpdate`, source); `inner` alone
    /// if there are none.
    pub(super) fn wrap(
        inner: Arc<dyn ClientCertVerifier>,
        mut expiries: Vec<(i64, Box<str>)>,
    ) -> Arc<dyn ClientCertVerifier> {
        if expiries.is_empty() {
            return inner;
        }
        expiries.sort_unstable_by_key(|(next, _)| *next);
        Arc::new(Watched {
            inner,
            expiries: expiries.into_boxed_slice(),
            warned: AtomicUsize::new(0),
        })
    }

    /// Warns of each CRL whose `nextUpdate` passed by `now` and was not
    /// warned of yet (the verification that takes its place says it).
    fn warn_expired(&self, now: UnixTime) {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        loop {
            let i = self.warned.load(Relaxed);
            let Some((next, what)) = self.expiries.get(i) else {
                return;
            };
            if now < *next {
                return;
            }
            if self
                .warned
                .compare_exchange(i, i + 1, Relaxed, Relaxed)
                .is_ok()
            {
                tracing::warn!(
                    crl = &**what,
                    next_update = %date(*next),
                    "a client CA's CRL expired while the server runs (its nextUpdate passed) and is still used: it may miss devices revoked since; fetch the CA's current CRL, then reload (SIGHUP)"
                );
            }
        }
    }
}

impl ClientCertVerifier for Watched {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.warn_expired(now);
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// `at` (seconds since the Unix epoch) as an HTTP date, for a message.
fn date(at: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at.max(0) as u64);
    httpdate::fmt_http_date(at)
}

/// A `Time` (UTCTime or GeneralizedTime) in seconds since the Unix epoch.
fn time(r: BERReader<'_, '_>) -> yasna::ASN1Result<i64> {
    Ok(match r.lookahead_tag()? == TAG_UTCTIME {
        true => r.read_utctime()?.datetime().unix_timestamp(),
        false => r.read_generalized_time()?.datetime().unix_timestamp(),
    })
}

/// The contents of a DER element (`tlv` whole), without its tag and length.
fn contents(tlv: &[u8]) -> Option<&[u8]> {
    let first = *tlv.get(1)?;
    let header = match first {
        0..0x80 => 2,
        _ => 2 + usize::from(first & 0x7f),
    };
    tlv.get(header..)
}

fn parse_crl(der: &[u8]) -> Option<Crl> {
    let (tbs, algorithm, signature) = yasna::parse_ber(der, |r| {
        r.read_sequence(|list| {
            let tbs = list.next().read_der()?;
            let algorithm = list.next().read_der()?;
            let (signature, _bits) = list.next().read_bitvec_bytes()?;
            Ok((tbs, algorithm, signature))
        })
    })
    .ok()?;
    let (issuer, next_update) = yasna::parse_ber(&tbs, |r| {
        r.read_sequence(|tbs| {
            // Version (v2) if present, then `signature` (the same
            // algorithm as outside).
            tbs.read_optional(|r| r.read_i64())?;
            tbs.next().read_der()?;
            let issuer = tbs.next().read_der()?;
            time(tbs.next())?;
            let next_update = tbs.read_optional(time)?;
            // Revoked certificates and extensions, unread.
            while tbs.read_optional(|r| r.read_der())?.is_some() {}
            Ok((issuer, next_update))
        })
    })
    .ok()?;
    Some(Crl {
        algorithm: contents(&algorithm)?.to_vec(),
        tbs,
        issuer,
        next_update,
        signature,
    })
}

fn parse_root(der: &[u8]) -> Option<Root> {
    let (subject, spki, extensions) = yasna::parse_ber(der, |r| {
        r.read_sequence(|cert| {
            let found = cert.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                // Serial, signature algorithm, issuer, validity.
                for _ in 0..4 {
                    tbs.next().read_der()?;
                }
                let subject = tbs.next().read_der()?;
                let spki = tbs.next().read_der()?;
                // Unique IDs ([1], [2]) if any, then extensions ([3]).
                let mut extensions = None;
                while let Some(item) = tbs.read_optional(|r| r.read_der())? {
                    if item.first() == Some(&0xa3) {
                        extensions = Some(item);
                    }
                }
                Ok((subject, spki, extensions))
            })?;
            cert.next().read_der()?;
            cert.next().read_der()?;
            Ok(found)
        })
    })
    .ok()?;
    let (key_algorithm, key) = yasna::parse_ber(&spki, |r| {
        r.read_sequence(|spki| {
            let algorithm = spki.next().read_der()?;
            let (key, _bits) = spki.next().read_bitvec_bytes()?;
            Ok((algorithm, key))
        })
    })
    .ok()?;
    let crl_sign = match extensions {
        None => true,
        Some(extensions) => crl_sign(contents(&extensions)?)?,
    };
    Some(Root {
        subject,
        key_algorithm: contents(&key_algorithm)?.to_vec(),
        key,
        crl_sign,
    })
}

/// Whether `extensions` (a certificate's `Extensions`, DER) allow signing
/// CRLs: no `KeyUsage` (2.5.29.15), or one with `cRLSign` (bit 6).
fn crl_sign(extensions: &[u8]) -> Option<bool> {
    let key_usage = yasna::models::ObjectIdentifier::from_slice(&[2, 5, 29, 15]);
    let mut found = None;
    yasna::parse_ber(extensions, |r| {
        r.read_sequence_of(|r| {
            r.read_sequence(|ext| {
                let id = ext.next().read_oid()?;
                ext.read_optional(|r| r.read_bool())?;
                let value = ext.next().read_bytes()?;
                if id == key_usage {
                    found = Some(value);
                }
                Ok(())
            })
        })
    })
    .ok()?;
    let Some(value) = found else {
        return Some(true);
    };
    let (bits, len) = yasna::parse_ber(&value, |r| r.read_bitvec_bytes()).ok()?;
    // Bit 0 is the first byte's high bit; bit 6 is 0x02 of it.
    Some(len > 6 && bits.first().is_some_and(|b| b & 0x02 != 0))
}
