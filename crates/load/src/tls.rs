//! TLS for `load https://…`: the rustls client configuration (trust roots from
//! `--cacert`, or no verification with `--insecure`), ALPN for the chosen
//! protocol, the session cache behind `--no-tls-resume`, and the blocking probe
//! handshake `load` makes before a run so a certificate or ALPN mismatch is one
//! clear error instead of thousands of counted failures.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::LoadError;
use crate::sessions::SessionStore;

/// ALPN protocol id of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

/// How the client trusts the server's certificate.
#[derive(Debug, Clone)]
pub(crate) enum Trust<'a> {
    /// The CA certificates in a PEM file (`--cacert`).
    CaFile(&'a Path),
    /// Any certificate (`--insecure`).
    Anything,
}

/// Builds the client configuration: TLS 1.2 and 1.3 on ring (as the server
/// library), ALPN `alpn`, and when `resume` a session cache with room for
/// `connections` concurrent resumptions (else every handshake is a full one).
pub(crate) fn client_config(
    trust: Trust<'_>,
    alpn: &[u8],
    resume: bool,
    connections: usize,
) -> Result<Arc<ClientConfig>, LoadError> {
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| LoadError::io("cannot configure TLS", std::io::Error::other(e)))?;
    let mut config = match trust {
        Trust::CaFile(path) => builder
            .with_root_certificates(read_roots(path)?)
            .with_no_client_auth(),
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = if resume {
        Resumption::store(Arc::new(SessionStore::for_connections(connections)))
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Reads every certificate of a PEM file into a root store.
fn read_roots(path: &Path) -> Result<RootCertStore, LoadError> {
    let bad = |hint: String| LoadError::invalid("--cacert", path.display().to_string(), hint);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The server name to verify and send as SNI: the URL's host without port or
/// IPv6 brackets (an IP address is verified against the certificate's IP
/// names and sends no SNI).
pub(crate) fn server_name(authority: &str) -> Result<ServerName<'static>, LoadError> {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _port)| host),
    };
    ServerName::try_from(host.to_string()).map_err(|e| {
        LoadError::invalid(
            "URL",
            authority,
            format!("not a usable TLS server name: {e}"),
        )
    })
}

/// A certificate verifier that accepts **any** certificate, for load tests
/// against your own servers with self-signed certificates (`--insecure`).
///
/// It still checks the handshake signatures with the server's key, so the
/// client does the same cryptographic work as a verifying client (minus the
/// chain), but it proves nothing about who the server is: never use it where
/// the network is not yours.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Makes one blocking handshake with `addr` using `config` (its session cache
/// is not touched: the probe uses a copy without resumption) and returns the
/// protocol ALPN selected, if any. Errors say whether the certificate or the
/// connection was the problem and what to do.
pub(crate) fn probe(
    addr: SocketAddr,
    name: &ServerName<'static>,
    config: &ClientConfig,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, LoadError> {
    let mut config = config.clone();
    config.resumption = Resumption::disabled();
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|cause| LoadError::Unreachable { addr, cause })?;
    let fail = |cause: String, hint: &'static str| LoadError::Tls { addr, cause, hint };
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let mut conn = ClientConnection::new(Arc::new(config), name.clone())
        .map_err(|e| fail(e.to_string(), "check the URL's host name"))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let cert_problem = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::InvalidCertificate(_)
                            | rustls::Error::NoCertificatesPresented
                    )
                });
            let no_alpn = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::AlertReceived(
                            rustls::AlertDescription::NoApplicationProtocol
                        )
                    )
                });
            let hint = if no_alpn {
                "the server speaks none of the protocols offered by ALPN (h2 with --http2, else http/1.1): drop --http2 for an HTTP/1.1-only server"
            } else if cert_problem {
                "for a self-signed certificate use --insecure, or --cacert FILE with the CA that signed it"
            } else {
                "is the target a TLS listener? (use http:// for a cleartext one)"
            };
            return Err(fail(e.to_string(), hint));
        }
    }
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    // Close politely; the server may already have gone, which is fine.
    conn.send_close_notify();
    let _ = conn.write_tls(&mut tcp);
    let _ = tcp.flush();
    Ok(alpn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_drop_port_and_brackets() {
        assert_eq!(
            server_name("localhost:8443").unwrap(),
            ServerName::try_from("localhost").unwrap()
        );
        assert!(matches!(
            server_name("127.0.0.1:443").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:8443").unwrap(),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn configs_carry_alpn_and_resumption_choice() {
        let c = client_config(Trust::Anything, ALPN_H2, true, 4).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec()]);
        let missing = client_config(
            Trust::CaFile(Path::new("/nonexistent.pem")),
            ALPN_HTTP1,
            false,
            4,
        );
        let err = missing.unwrap_err().to_string();
        assert!(err.contains("--cacert"), "{err}");
    }
}
