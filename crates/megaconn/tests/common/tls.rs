//! TLS fixtures: a throwaway CA (rcgen) and the leaf certificates it signs
//! (and a server's configuration with one), a rustls client trusting it
//! (with a certificate of its own for mutual TLS if asked), its handshake,
//! and an HTTP/1.1 GET over any stream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::SAFETY;

/// A test CA and the certificates it signs.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A leaf certificate: PEM chain and key, and the DER the client will see.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new() -> Ca {
        Ca::with_params(CertificateParams::new(Vec::<String>::new()).unwrap())
    }

    /// A CA of its own name: a client that trusts it does not take a
    /// [`Ca::new`] one's certificates for its (it does not know their
    /// issuer), where two CAs of the default name fail on a signature.
    pub fn named(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca::with_params(params)
    }

    fn with_params(mut params: CertificateParams) -> Ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A server's TLS configuration: a leaf of this CA for `names`.
    pub fn server(&self, names: &[&str]) -> megaconn::TlsConfig {
        let leaf = self.leaf(names);
        megaconn::TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()
    }

    pub fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        self.client_versions(alpn, rustls::DEFAULT_VERSIONS)
    }

    pub fn client_versions(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        self.client_config(alpn, versions, None)
    }

    /// A client trusting this CA, offering `alpn`, presenting `identity`
    /// (a certificate chain and its key: mutual TLS) if given.
    pub fn client_as(
        &self,
        alpn: &[&[u8]],
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Arc<ClientConfig> {
        self.client_config(alpn, rustls::DEFAULT_VERSIONS, identity)
    }

    fn client_config(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A blocking socket to `addr` (reads bounded by `SAFETY`) and a rustls
/// client for `localhost` on it, driven by hand: nothing sent yet.
pub fn blocking_client(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> (std::net::TcpStream, rustls::ClientConnection) {
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(SAFETY)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    (tcp, rustls::ClientConnection::new(config, name).unwrap())
}

/// A [`blocking_client`] (TLS 1.3) that sent its ClientHello and read the
/// server's whole flight, to its Finished: the client's own Finished is
/// queued, unsent.
pub fn through_server_flight(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> (std::net::TcpStream, rustls::ClientConnection) {
    let (mut tcp, mut client) = blocking_client(addr, config);
    client.write_tls(&mut tcp).unwrap();
    while client.is_handshaking() {
        client.read_tls(&mut tcp).unwrap();
        client.process_new_packets().unwrap();
    }
    (tcp, client)
}

/// A TLS connection to `addr` as `name` (SNI), its handshake done.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    handshake(tcp, config, name)
        .await
        .expect("handshake succeeds")
}

/// The client's TLS handshake on `tcp` as `name` (SNI), bounded by
/// [`SAFETY`]: `Err` if it fails on the client's side.
pub async fn handshake(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(SAFETY, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake in time")
}

/// Sets up HTTP/2 on `tls` (ALPN `h2`): the preface and an empty SETTINGS
/// frame, then the header of the server's SETTINGS, which come once its h2
/// handshake is done (their payload is left unread).
pub async fn h2_settings_exchanged<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S) {
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut settings = [0u8; 9];
    tokio::time::timeout(SAFETY, tls.read_exact(&mut settings))
        .await
        .expect("the server's SETTINGS")
        .unwrap();
    assert_eq!(settings[3], 0x04, "a SETTINGS frame: {settings:?}");
}

/// One HTTP/1.1 GET on a kept-alive stream; returns status line and body.
pub async fn http1_get<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> (String, String) {
    http1_get_path(io, "/").await.expect("a response")
}

/// One HTTP/1.1 GET of `path` (a response with a Content-Length) on a
/// kept-alive stream: status line and body, or the error reading it (a
/// refused TLS client reads the server's alert; the end of the stream
/// before the whole response is `UnexpectedEof`). Bounded by [`SAFETY`].
pub async fn http1_get_path<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    path: &str,
) -> std::io::Result<(String, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    let mut buf = Vec::new();
    tokio::time::timeout(SAFETY, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            let Some(head_end) = text.find("\r\n\r\n") else {
                continue;
            };
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if buf.len() >= head_end + 4 + len {
                let status = text.lines().next().unwrap().to_string();
                return Ok((status, text[head_end + 4..head_end + 4 + len].to_string()));
            }
        }
    })
    .await
    .expect("a response or an error in time")
}

pub fn write_pair(dir: &Path, leaf: &Leaf) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (cert, key)
}

/// `message` in handshake records of one byte each: 6 bytes on the wire
/// per byte of it.
pub fn one_byte_records(message: &[u8]) -> Vec<u8> {
    message
        .iter()
        .flat_map(|&b| [0x16, 0x03, 0x01, 0x00, 0x01, b])
        .collect()
}

/// The first `wire` bytes of a ClientHello promising 65,000 bytes (under
/// rustls' 65,535 limit) sent in 1-byte records: a handshake that makes the
/// server buffer all of them without ever completing a message.
pub fn tiny_record_hello(wire: usize) -> Vec<u8> {
    tiny_record_message(0x01, wire)
}

/// The first `wire` bytes of a handshake message of type `kind` promising
/// 65,000 bytes, in plaintext 1-byte records (see [`tiny_record_hello`]).
pub fn tiny_record_message(kind: u8, wire: usize) -> Vec<u8> {
    let mut message = vec![kind, 0x00, 0xfd, 0xe8];
    message.resize(4 + 65_000, 0);
    let mut records = one_byte_records(&message);
    records.truncate(wire);
    records
}

/// A GET request encrypted by the client's `session` into the records to
/// send, by hand: a test then sends them whole, cut or altered.
pub fn sealed_get(session: &mut rustls::ClientConnection) -> Vec<u8> {
    std::io::Write::write_all(
        &mut session.writer(),
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    let mut records = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut records).unwrap();
    }
    records
}
