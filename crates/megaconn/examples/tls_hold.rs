//! Holds N idle HTTPS connections to a server, each after one `GET /`: the
//! client side of `bench/idle-memory-tls.sh`.
//!
//! ```text
//! cargo run --release -p megaconn --example tls_hold -- \
//!   --connect 127.0.0.1:8443 -n 15000 [--h2] [--concurrency 64]
//!   [--path /] [--body-bytes 0] [--name localhost]
//!   [--client-cert device.pem --client-key device-key.pem]
//! ```
//!
//! With `--client-cert`/`--client-key` each connection presents that
//! certificate (mutual TLS: a server with `TlsConfig::client_auth`).
//!
//! Each connection does a full TLS handshake (no resumption, so every server
//! sees the same work), offers ALPN `http/1.1` (or `h2` with `--h2`), makes one
//! request (`GET`, or `POST` with `--body-bytes N`), reads the whole response
//! and then stays open and quiet. Once all are open it prints one line,
//! `held N failed F`, on stdout and holds them until SIGTERM or SIGINT.
//!
//! The server certificate is **not verified**: this is a measuring client for
//! throwaway self-signed certificates on loopback, never a real client. One
//! process can hold only as many connections as its open-file limit allows
//! (20,000 on the benchmark machine).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One connection's whole setup (connect, handshake, one exchange) must finish
/// within this, or it counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong opening one connection.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("bad response: {0}")]
    Response(String),
    #[error("timed out")]
    TimedOut,
}

struct Args {
    connect: SocketAddr,
    n: usize,
    h2: bool,
    concurrency: usize,
    path: String,
    body_bytes: usize,
    name: String,
    /// `--client-cert` and `--client-key`: the identity to present.
    client: Option<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        connect: "127.0.0.1:8443".parse().expect("a valid address"),
        n: 1000,
        h2: false,
        concurrency: 64,
        path: "/".into(),
        body_bytes: 0,
        name: "localhost".into(),
        client: None,
    };
    let mut client_cert = None;
    let mut client_key = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |what: &str| it.next().ok_or(format!("{a} needs {what}"));
        match a.as_str() {
            "--connect" => {
                args.connect = value("ADDR")?.parse().map_err(|e| format!("{e}"))?;
            }
            "-n" => args.n = value("N")?.parse().map_err(|e| format!("{e}"))?,
            "--h2" => args.h2 = true,
            "--concurrency" => {
                args.concurrency = value("N")?.parse().map_err(|e| format!("{e}"))?;
            }
            "--path" => args.path = value("PATH")?,
            "--body-bytes" => {
                args.body_bytes = value("N")?.parse().map_err(|e| format!("{e}"))?;
            }
            "--name" => args.name = value("NAME")?,
            "--client-cert" => client_cert = Some(value("FILE")?),
            "--client-key" => client_key = Some(value("FILE")?),
            "-h" | "--help" => {
                return Err(
                    "usage: tls_hold --connect ADDR -n N [--h2] [--concurrency N] \
                            [--path /] [--body-bytes N] [--name localhost] \
                            [--client-cert FILE --client-key FILE]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    args.client = match (client_cert, client_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--client-cert and --client-key go together".into()),
    };
    Ok(args)
}

/// Accepts any certificate: see the module doc.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(h2: bool, client: Option<&(String, String)>) -> Arc<ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)));
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .expect("--client-cert: a PEM certificate chain");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .expect("--client-key: a PEM private key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("a usable client certificate and key")
        }
    };
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    // Every connection a full handshake: the same work on every server.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// An open connection, kept only so that it stays open.
enum Held {
    Http1(#[allow(dead_code)] Box<tokio_rustls::client::TlsStream<TcpStream>>),
    // The connection's driver runs as a task; the handle keeps it open.
    Http2(#[allow(dead_code)] h2::client::SendRequest<Bytes>),
}

async fn open(args: &Args, connector: &TlsConnector) -> Result<Held, OpenError> {
    let tcp = TcpStream::connect(args.connect).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(args.name.clone())
        .map_err(|e| OpenError::Response(format!("bad --name: {e}")))?;
    let mut tls = connector.connect(name, tcp).await?;
    let body = vec![b'x'; args.body_bytes];
    if args.h2 {
        let (client, conn) = h2::client::handshake(tls).await?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await?;
        let request = http::Request::builder()
            .method(if body.is_empty() { "GET" } else { "POST" })
            .uri(format!("https://{}{}", args.name, args.path))
            .body(())
            .map_err(|e| OpenError::Response(e.to_string()))?;
        let (response, mut send) = client.send_request(request, body.is_empty())?;
        if !body.is_empty() {
            send.send_data(Bytes::from(body), true)?;
        }
        let response = response.await?;
        if !response.status().is_success() {
            return Err(OpenError::Response(response.status().to_string()));
        }
        let mut recv = response.into_body();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let _ = recv.flow_control().release_capacity(chunk.len());
        }
        Ok(Held::Http2(client))
    } else {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let mut request = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            args.path,
            args.name,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        tls.write_all(&request).await?;
        // write_all may leave the record in rustls' buffer when the socket
        // would block; only flush guarantees it was sent.
        tls.flush().await?;
        read_http1_response(&mut tls).await?;
        Ok(Held::Http1(Box::new(tls)))
    }
}

/// Reads one HTTP/1.1 response with a `content-length` (all our peers send
/// one) and checks its status is 2xx.
async fn read_http1_response<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> Result<(), OpenError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(OpenError::Response("closed before the response".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 2") {
            return Err(OpenError::Response(
                head.lines().next().unwrap_or("").into(),
            ));
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| OpenError::Response("no content-length".into()))?;
        if buf.len() >= end + 4 + len {
            return Ok(());
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let connector = TlsConnector::from(client_config(args.h2, args.client.as_ref()));
        let mut held = Vec::with_capacity(args.n);
        let mut failed = 0usize;
        let mut opens = stream::iter(0..args.n)
            .map(|_| async {
                tokio::time::timeout(OPEN_TIMEOUT, open(&args, &connector))
                    .await
                    .unwrap_or(Err(OpenError::TimedOut))
            })
            .buffer_unordered(args.concurrency.max(1));
        while let Some(r) = opens.next().await {
            match r {
                Ok(h) => held.push(h),
                Err(e) => {
                    if failed < 5 {
                        eprintln!("connection failed: {e}");
                    }
                    failed += 1;
                }
            }
            let done = held.len() + failed;
            if done % 1000 == 0 {
                eprintln!("{done} / {}", args.n);
            }
        }
        drop(opens);
        println!("held {} failed {failed}", held.len());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        drop(held);
    });
}
