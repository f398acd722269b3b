//! Client certificates (mutual TLS): which CA roots a TLS client's
//! certificate must chain to ([`ClientCa`], [`ClientAuth`], set with
//! `TlsConfig::client_auth`), the verifier rustls runs with them
//! (`WebPkiClientVerifier`: no certificate checking of our own), and the
//! chain a verified client presented as handlers see it
//! ([`PeerCertificates`]).
//!
//! What it costs a connection: nothing with client auth off (rustls keeps
//! an empty `Option` for the peer's chain in every session already). On,
//! the connection keeps the client's chain (its DER, ~0.5–1.5 KB a
//! certificate) for its life, parked or awake, once: the TLS stream takes
//! it out of the rustls session when the handshake completes (the patched
//! rustls' `take_peer_certificates`, patches/README.md) as one
//! [`PeerCertificates`], which parks with the session (`ParkedTls`) and
//! which every HTTP/1.1 request's extension shares by refcount, across
//! wake-ups (`TlsIo::shared_peer_certificates`): no copy. Before, the
//! session kept its chain and a copy was made at the first request after
//! the handshake and after every wake-up (a second copy kept while parked
//! would have doubled the chain's DER on every parked connection). An
//! HTTP/2 connection's requests and a message connection's `Session`
//! (made at every wake-up) share it too (since session 51; HTTP/2 made a
//! copy per connection, a message connection one per wake-up).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::conn::tls::TlsError;

mod crl;

/// PEM text to read: a file (read again by `TlsConfig::reload`), or bytes.
#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(path) => write!(f, "{}", path.display()),
            Pem::Bytes(_) => f.write_str("PEM in memory"),
        }
    }
}

impl Pem {
    /// Where it comes from, for an error message.
    fn what(&self) -> String {
        match self {
            Pem::File(path) => path.display().to_string(),
            Pem::Bytes(_) => "the PEM given".to_owned(),
        }
    }
}

/// The certificate authorities a client certificate must chain to, and
/// any certificate revocation lists (CRLs) to check it against: from PEM
/// files (read again by [`TlsConfig::reload`](crate::TlsConfig::reload),
/// so a renewed CA bundle or a new CRL applies on SIGHUP) or PEM text.
///
/// ```no_run
/// # fn run() -> Result<(), megaconn::TlsError> {
/// use megaconn::{ClientAuth, ClientCa, TlsConfig};
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?
///     .client_auth(ClientAuth::Required(
///         ClientCa::from_pem_file("devices-ca.pem").with_crl_pem_file("devices.crl.pem"),
///     ))?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ClientCa {
    roots: Pem,
    crls: Vec<Pem>,
}

impl ClientCa {
    /// CA certificates from a PEM file (one or more `CERTIFICATE` blocks).
    /// Read when given to [`TlsConfig::client_auth`](crate::TlsConfig::client_auth)
    /// (an unreadable file is an error there) and again at each reload.
    pub fn from_pem_file(path: impl AsRef<Path>) -> ClientCa {
        ClientCa {
            roots: Pem::File(path.as_ref().to_path_buf()),
            crls: Vec::new(),
        }
    }

    /// CA certificates from PEM text.
    pub fn from_pem(pem: &[u8]) -> ClientCa {
        ClientCa {
            roots: Pem::Bytes(pem.to_vec()),
            crls: Vec::new(),
        }
    }

    /// Adds certificate revocation lists from a PEM file (`X509 CRL`
    /// blocks), read again at each reload. A client's own certificate is
    /// checked against them (not its intermediates'); one whose issuer has
    /// no CRL here is let in (its status is unknown, not revoked).
    ///
    /// Each CRL is checked when read ([`TlsConfig::client_auth`](crate::TlsConfig::client_auth)
    /// and each reload): one that does not read, that names a root here as
    /// its issuer but is not signed by it, or whose root has a `KeyUsage`
    /// without `cRLSign` is an error
    /// ([`TlsError::is_bad_crl`](crate::TlsError::is_bad_crl)) and nothing
    /// changes (a reload keeps the lists that worked). An expired CRL (its
    /// `nextUpdate` past) still applies, at load with a warning naming the
    /// file, and while the server runs, as webpki does by default. A CRL of an intermediate CA (not among the roots) is
    /// checked at the handshakes that need it; found bad there, the
    /// handshake fails as
    /// `megaconn_tls_handshakes_total{outcome="crl"}`, logged naming the
    /// file.
    ///
    /// **Open connections are not checked again.** A device revoked by a
    /// new CRL (then [`TlsConfig::reload`](crate::TlsConfig::reload), or
    /// SIGHUP to `megaconn serve`) keeps the connections it has open,
    /// parked or awake, until they close (`max_connection_age` bounds how
    /// long); its next handshake is refused (a full one: resumption starts
    /// afresh when the CRLs change). To cut it off at once, close them from
    /// the application: its handlers see its certificate
    /// ([`PeerCertificates`]), and a message connection's id can be closed
    /// with [`Hub::close`](crate::Hub::close).
    pub fn with_crl_pem_file(mut self, path: impl AsRef<Path>) -> ClientCa {
        self.crls.push(Pem::File(path.as_ref().to_path_buf()));
        self
    }

    /// Adds certificate revocation lists from PEM text, checked as
    /// [`with_crl_pem_file`](ClientCa::with_crl_pem_file)'s are (and, as
    /// there, a revoked device's open connections stay open).
    pub fn with_crl_pem(mut self, pem: &[u8]) -> ClientCa {
        self.crls.push(Pem::Bytes(pem.to_vec()));
        self
    }

    /// Whether something here is read from a file (a reload reads it again).
    pub(crate) fn has_files(&self) -> bool {
        std::iter::once(&self.roots)
            .chain(&self.crls)
            .any(|p| matches!(p, Pem::File(_)))
    }
}

/// Whether TLS clients are asked for a certificate
/// ([`TlsConfig::client_auth`](crate::TlsConfig::client_auth)). The same
/// for every listener and SNI name of a configuration (rustls has one
/// verifier per configuration).
#[derive(Clone, Debug, Default)]
pub enum ClientAuth {
    /// No certificate is asked for (the default).
    #[default]
    Off,
    /// A certificate is asked for and, if the client sends one, it must
    /// chain to these roots (else the handshake fails); a client that
    /// sends none is let in, and its requests carry no
    /// [`PeerCertificates`].
    Optional(ClientCa),
    /// Every client must present a certificate that chains to these roots:
    /// one that sends none fails the handshake with rustls'
    /// `certificate_required` alert (TLS 1.3; `handshake_failure` on 1.2),
    /// one from another CA with `unknown_ca`, an expired one with
    /// `certificate_expired`, a revoked one with `certificate_revoked`.
    /// Each is counted in
    /// `megaconn_tls_handshakes_total{outcome="client_cert"}` and by why in
    /// `megaconn_tls_client_cert_refusals_total{reason}` (`missing`,
    /// `unknown_ca`, `revoked`, `expired`, `not_yet_valid`, `bad`), and
    /// logged (rate-limited) with that reason and rustls' error.
    Required(ClientCa),
}

impl ClientAuth {
    fn ca(&self) -> Option<&ClientCa> {
        match self {
            ClientAuth::Off => None,
            ClientAuth::Optional(ca) | ClientAuth::Required(ca) => Some(ca),
        }
    }

    /// Whether a reload has files of this to read again.
    pub(crate) fn has_files(&self) -> bool {
        self.ca().is_some_and(ClientCa::has_files)
    }

    /// Reads the roots and CRLs and builds rustls' verifier: `None` with
    /// client auth off.
    pub(crate) fn load(&self) -> Result<Option<LoadedClientAuth>, TlsError> {
        let Some(ca) = self.ca() else {
            return Ok(None);
        };
        let pem = read(&ca.roots)?;
        let what = ca.roots.what();
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::new(format!("cannot read CA certificates from {what}: {e}")))?;
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots.add(cert.clone()).map_err(|e| {
                TlsError::new(format!("a CA certificate in {what} is not usable: {e}"))
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::new(format!(
                "no CA certificate found in {what} (client certificates need at least one root)"
            )));
        }
        let mut crls = Vec::new();
        // The CRLs' `nextUpdate`s still ahead, watched (`crl::Watched`).
        let mut expiries = Vec::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for source in &ca.crls {
            let pem = read(source)?;
            let what = source.what();
            let found = CertificateRevocationListDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::bad_crl(format!("cannot read CRLs from {what}: {e}")))?;
            if found.is_empty() {
                return Err(TlsError::bad_crl(format!(
                    "no CRL (X509 CRL block) found in {what}"
                )));
            }
            for crl in &found {
                if let Some(next) = crl::check(crl, &certs, now, &what)? {
                    expiries.push((next, Box::from(what.as_str())));
                }
            }
            crls.extend(found);
        }
        // What a handshake's line names if webpki still finds a CRL bad
        // (one of an intermediate CA, which `crl::check` cannot verify).
        let crl_sources = (!ca.crls.is_empty()).then(|| {
            let names: Vec<String> = ca.crls.iter().map(Pem::what).collect();
            Arc::<str>::from(names.join(", "))
        });
        // What a change is judged by: a reload that reads the same roots
        // and CRLs keeps resumption (`TlsConfig::reload`).
        let mut fingerprint: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
        fingerprint.extend(crls.iter().map(|c| c.to_vec()));
        fingerprint.push(vec![u8::from(matches!(self, ClientAuth::Optional(_)))]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !crls.is_empty() {
            // The client's own certificate is what a fleet revokes; an
            // issuer with no CRL given is not a reason to refuse (webpki's
            // default would refuse every client of a CA without one).
            builder = builder
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        if matches!(self, ClientAuth::Optional(_)) {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder.build().map_err(|e| match e {
            rustls::server::VerifierBuilderError::InvalidCrl(e) => TlsError::bad_crl(format!(
                "a CRL in {} does not read: {e:?}",
                crl_sources.as_deref().unwrap_or_default()
            )),
            e => TlsError::new(format!("cannot verify client certificates: {e}")),
        })?;
        let verifier = crl::Watched::wrap(verifier, expiries);
        Ok(Some(LoadedClientAuth {
            verifier,
            fingerprint,
            crl_sources,
        }))
    }
}

/// PEM bytes from a file or memory.
fn read(source: &Pem) -> Result<Vec<u8>, TlsError> {
    match source {
        Pem::Bytes(b) => Ok(b.clone()),
        Pem::File(path) => std::fs::read(path)
            .map_err(|e| TlsError::new(format!("cannot read {}: {e}", path.display()))),
    }
}

/// A [`ClientAuth`] read and made into rustls' verifier.
#[derive(Clone)]
pub(crate) struct LoadedClientAuth {
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The roots' and CRLs' DER and the mode: a change of any of them
    /// starts resumption afresh (`tls.rs`, `Resumption`).
    pub fingerprint: Vec<Vec<u8>>,
    /// Where the CRLs came from (files or "the PEM given"), for the line
    /// a handshake logs if webpki finds one bad; `None` without CRLs.
    pub crl_sources: Option<Arc<str>>,
}

impl fmt::Debug for LoadedClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedClientAuth")
            .field("items", &self.fingerprint.len())
            .finish_non_exhaustive()
    }
}

// `CertRefusal` lives with the counter it indexes (`observe/stats.rs`): the
// observe layer sits below this one and may not import it.
pub(crate) use crate::observe::stats::CertRefusal;

/// What a handshake's failure (`e`, rustls' error) says of client auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuthFailure {
    /// The client's certificate refused: none sent where one is required,
    /// or one that did not verify. A server verifies no other
    /// certificate, so these errors can only be about the client's.
    Refused(CertRefusal),
    /// A CRL of the server's own failed to check (webpki found its
    /// signature bad, its issuer unfit to sign CRLs, or its encoding
    /// unsupported): the server's fault, not the client's. `ClientCa`'s
    /// checks at load refuse most such CRLs; what is left is a CRL of an
    /// intermediate CA, which only a client's chain names.
    Crl,
}

impl ClientAuthFailure {
    /// `e`'s kind, if it is about client auth.
    pub(crate) fn of(e: &rustls::Error) -> Option<ClientAuthFailure> {
        use rustls::CertificateError as C;
        let refused = match e {
            rustls::Error::NoCertificatesPresented => CertRefusal::Missing,
            rustls::Error::InvalidCertRevocationList(_) => return Some(ClientAuthFailure::Crl),
            rustls::Error::InvalidCertificate(e) => match e {
                C::UnknownIssuer => CertRefusal::UnknownCa,
                C::Revoked => CertRefusal::Revoked,
                C::Expired | C::ExpiredContext { .. } => CertRefusal::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => CertRefusal::NotYetValid,
                // Only with `enforce_revocation_expiration`, which is not
                // set; the server's CRL if it ever comes.
                C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                    return Some(ClientAuthFailure::Crl)
                }
                _ => CertRefusal::Bad,
            },
            _ => return None,
        };
        Some(ClientAuthFailure::Refused(refused))
    }
}

/// The certificate chain a TLS client presented and the server verified
/// against [`ClientAuth`]'s roots: the client's own certificate first,
/// then any intermediates it sent. Cheap to clone (shared).
///
/// Where handlers find it:
/// - HTTP/1.1 and HTTP/2: a request extension
///   (`request.extensions().get::<PeerCertificates>()`; with axum,
///   `Extension<PeerCertificates>` or `Option<Extension<PeerCertificates>>`),
///   also on the request that opens an `axum_ws` socket or an
///   [`SseRoute`](crate::SseRoute) stream (its handler's `on_open`);
/// - framed TCP and Server-Sent Events: [`Session::peer_certificates`](crate::Session::peer_certificates);
/// - native WebSocket: [`WsSession::peer_certificates`](crate::WsSession::peer_certificates).
///
/// Absent on cleartext connections, with client auth off, and for a client
/// that sent none under [`ClientAuth::Optional`]. A resumed TLS session
/// carries the chain of the handshake it resumes (rustls keeps it in the
/// ticket or session cache).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCertificates(Arc<[CertificateDer<'static>]>);

impl PeerCertificates {
    /// A copy of the chain as a handler sees it (one allocation for the
    /// shared slice, one per certificate's DER); `None` for none (or an
    /// empty one).
    #[inline]
    pub(crate) fn of(chain: Option<&[CertificateDer<'static>]>) -> Option<PeerCertificates> {
        let chain = chain.filter(|c| !c.is_empty())?;
        Some(PeerCertificates(Arc::from(chain)))
    }

    /// The chain taken out of a TLS session at its handshake (the patched
    /// rustls' `take_peer_certificates`, patches/README.md), moved into
    /// the shared slice: the certificates' DER is not copied. `None` for
    /// none (or an empty one).
    pub(crate) fn taken(chain: Option<Vec<CertificateDer<'static>>>) -> Option<PeerCertificates> {
        let chain = chain.filter(|c| !c.is_empty())?;
        Some(PeerCertificates(Arc::from(chain)))
    }

    /// The client's own certificate (DER).
    pub fn end_entity(&self) -> &CertificateDer<'static> {
        &self.0[0]
    }

    /// The whole chain as the client sent it (DER), its own certificate first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.0
    }

    /// The client certificate's subject common name (`CN`), the name a
    /// fleet usually gives each device; `None` if its subject has none
    /// (or it is in a string type this does not read: UTF8String,
    /// PrintableString, IA5String and BMPString are read, what CAs issue).
    /// Parsed from the DER at each call.
    pub fn common_name(&self) -> Option<String> {
        subject_common_name(self.end_entity())
    }
}

impl fmt::Debug for PeerCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCertificates")
            .field("common_name", &self.common_name())
            .field("chain_len", &self.0.len())
            .finish()
    }
}

/// A certificate's subject CN (RFC 5280, 4.1.2.6; OID 2.5.4.3), read with
/// yasna as `tls.rs` reads `notAfter`.
fn subject_common_name(der: &[u8]) -> Option<String> {
    use yasna::models::ObjectIdentifier;
    use yasna::{tags, BERReader, Tag};
    let cn = ObjectIdentifier::from_slice(&[2, 5, 4, 3]);
    fn string(r: BERReader<'_, '_>) -> yasna::ASN1Result<Option<String>> {
        let tag = r.lookahead_tag()?;
        Ok(Some(if tag == tags::TAG_UTF8STRING {
            r.read_utf8string()?
        } else if tag == tags::TAG_PRINTABLESTRING {
            r.read_printable_string()?
        } else if tag == tags::TAG_IA5STRING {
            r.read_ia5_string()?
        } else if tag == tags::TAG_BMPSTRING {
            r.read_bmp_string()?
        } else {
            r.read_der()?;
            return Ok(None);
        }))
    }
    let read = yasna::parse_ber(der, |r| {
        r.read_sequence(|cert| {
            let name = cert.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                // Serial, signature algorithm, issuer, validity.
                for _ in 0..4 {
                    tbs.next().read_der()?;
                }
                let mut found = None;
                tbs.next().read_sequence_of(|rdn| {
                    rdn.read_set_of(|atv| {
                        atv.read_sequence(|atv| {
                            let oid = atv.next().read_oid()?;
                            let value = string(atv.next())?;
                            if oid == cn && found.is_none() {
                                found = value;
                            }
                            Ok(())
                        })
                    })
                })?;
                // Key and the optional rest, unread.
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(found)
            })?;
            cert.next().read_der()?;
            cert.next().read_der()?;
            Ok(name)
        })
    });
    read.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["device.local".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Fleet");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().clone()
    }

    /// The subject's CN is read past the other attributes of the subject.
    #[test]
    fn the_common_name_is_read_off_the_subject() {
        let chain = [cert_with_cn("device-42")];
        let peer = PeerCertificates::of(Some(&chain)).unwrap();
        assert_eq!(peer.common_name().as_deref(), Some("device-42"));
        assert_eq!(peer.end_entity(), &chain[0]);
        assert_eq!(PeerCertificates::of(Some(&[])), None);
        assert_eq!(PeerCertificates::of(None), None);
    }

    /// A subject without a CN has none, and garbage is no panic.
    #[test]
    fn no_common_name_is_none() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x.local".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Fleet");
        let der = params.self_signed(&key).unwrap().der().clone();
        assert_eq!(subject_common_name(&der), None);
        assert_eq!(subject_common_name(b"\x30\x03\x02\x01\x01"), None);
    }

    /// A CA file with no certificate, or a CRL file with no CRL, is an
    /// error when configured, not a verifier that lets nobody (or
    /// everybody) in.
    #[test]
    fn an_empty_ca_or_crl_is_refused() {
        let err = ClientAuth::Required(ClientCa::from_pem(b""))
            .load()
            .unwrap_err();
        assert!(err.to_string().contains("no CA certificate"), "{err}");
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let err =
            ClientAuth::Required(ClientCa::from_pem(ca.cert.pem().as_bytes()).with_crl_pem(b""))
                .load()
                .unwrap_err();
        assert!(err.to_string().contains("no CRL"), "{err}");
        let err = ClientAuth::Optional(ClientCa::from_pem_file("/nonexistent/ca.pem"))
            .load()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    /// A CRL current when loaded whose `nextUpdate` passes while the
    /// server runs is warned of once, at the first client certificate
    /// verified after it (with the time rustls verifies at), and not at
    /// the verifications before nor after.
    #[test]
    fn a_crl_expiring_while_running_is_warned_of_once() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt as _;
        struct Warnings(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                struct Fields(String);
                impl tracing::field::Visit for Fields {
                    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn fmt::Debug) {
                        self.0 += &format!(" {}={v:?}", f.name());
                    }
                }
                if *event.metadata().level() == tracing::Level::WARN {
                    let mut fields = Fields(String::new());
                    event.record(&mut fields);
                    self.0.lock().unwrap().push(fields.0);
                }
            }
        }
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let device_key = rcgen::KeyPair::generate().unwrap();
        let device = rcgen::CertificateParams::new(vec!["device.local".into()])
            .unwrap()
            .signed_by(&device_key, &ca, &ca_key)
            .unwrap();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca, &ca_key)
        .unwrap();
        let said = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Warnings(said.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let loaded = ClientAuth::Required(
                ClientCa::from_pem(ca.pem().as_bytes()).with_crl_pem(crl.pem().unwrap().as_bytes()),
            )
            .load()
            .unwrap()
            .unwrap();
            // 2099-01-01 00:00:00 UTC.
            let next_update = 4_070_908_800;
            let at = |secs: u64| {
                let when = rustls_pki_types::UnixTime::since_unix_epoch(
                    std::time::Duration::from_secs(secs),
                );
                let _ = loaded.verifier.verify_client_cert(device.der(), &[], when);
            };
            at(next_update - 1);
            assert_eq!(said.lock().unwrap().len(), 0, "{said:?}");
            at(next_update);
            at(next_update + 1);
            at(next_update + 86_400);
            let said = said.lock().unwrap();
            assert_eq!(said.len(), 1, "{said:?}");
            assert!(
                said[0].contains("crl=\"the PEM given\"")
                    && said[0].contains("expired while the server runs")
                    && said[0].contains("Thu, 01 Jan 2099 00:00:00 GMT"),
                "{said:?}"
            );
        });
    }
}
