//! The mode matrix: the same test in every way a client can reach the
//! server — HTTP/1.1, HTTP/1.1 over TLS, h2c (prior knowledge) and HTTP/2
//! over TLS (Go's `clientserver_test.go` `run(t, f)` is the model).
//!
//! [`Mode::server`] starts the test app for a mode (with a throwaway CA for
//! the TLS ones), [`ModeServer::client`] opens a connection that speaks the
//! mode, and [`Events`] reads the server's lifecycle events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use megaconn::{Builder, CloseReason, ConnectionEvent};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{read_response_buffered, TestServer, SAFETY};

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1 in cleartext.
    H1,
    /// HTTP/1.1 over TLS (ALPN `http/1.1`).
    H1Tls,
    /// HTTP/2 in cleartext with prior knowledge.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2Tls,
}

/// Every mode, for `for mode in ALL`.
pub const ALL: [Mode; 4] = [Mode::H1, Mode::H1Tls, Mode::H2c, Mode::H2Tls];

impl Mode {
    /// Whether the mode runs over TLS.
    pub fn tls(self) -> bool {
        matches!(self, Mode::H1Tls | Mode::H2Tls)
    }

    /// Whether the mode speaks HTTP/2.
    pub fn http2(self) -> bool {
        matches!(self, Mode::H2c | Mode::H2Tls)
    }

    /// Whether idle connections of this mode park today (HTTP/1.1, over TLS
    /// or not; HTTP/2 keeps a task while idle).
    pub fn parks(self) -> bool {
        matches!(self, Mode::H1 | Mode::H1Tls)
    }

    /// Starts the test app on `builder` in this mode.
    pub async fn server(self, builder: Builder) -> ModeServer {
        let (builder, client_tls) = if self.tls() {
            let (server, client) = tls_pair(if self.http2() { b"h2" } else { b"http/1.1" });
            (builder.tls(server), Some(client))
        } else {
            (builder, None)
        };
        ModeServer {
            mode: self,
            server: TestServer::start(builder).await,
            client_tls,
        }
    }
}

/// A test server and how to reach it in one mode.
pub struct ModeServer {
    pub mode: Mode,
    pub server: TestServer,
    client_tls: Option<Arc<ClientConfig>>,
}

impl ModeServer {
    /// Opens a connection speaking the server's mode.
    pub async fn client(&self) -> Client {
        let tcp = TcpStream::connect(self.server.addr).await.expect("connect");
        client(self.mode, tcp, self.client_tls.clone()).await
    }

    /// [`client`](Self::client) from an address of its own
    /// (`connect_from_own_address`), for a test that tells the
    /// connection's log lines by their peer.
    pub async fn client_from_own_address(&self) -> Client {
        let tcp = super::connect_from_own_address(self.server.addr).await;
        client(self.mode, tcp, self.client_tls.clone()).await
    }
}

/// A CA-signed certificate for `localhost` and a client that trusts it,
/// offering `alpn`.
fn tls_pair(alpn: &[u8]) -> (megaconn::TlsConfig, Arc<ClientConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let server =
        megaconn::TlsConfig::from_pem(leaf.pem().as_bytes(), leaf_key.serialize_pem().as_bytes())
            .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    (server, Arc::new(config))
}

/// Any client byte stream (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One client connection in some mode.
pub enum Client {
    /// HTTP/1.1 (over TLS or not), kept alive.
    H1 {
        io: Box<dyn Io>,
        buf: Vec<u8>,
        local: SocketAddr,
    },
    /// HTTP/2: the request handle and the connection's task.
    H2 {
        send: h2::client::SendRequest<Bytes>,
        conn: tokio::task::JoinHandle<()>,
        local: SocketAddr,
    },
}

async fn client(mode: Mode, tcp: TcpStream, tls: Option<Arc<ClientConfig>>) -> Client {
    let local = tcp.local_addr().unwrap();
    let io: Box<dyn Io> = match tls {
        Some(config) => {
            let name = ServerName::try_from("localhost").unwrap();
            Box::new(
                tokio::time::timeout(SAFETY, TlsConnector::from(config).connect(name, tcp))
                    .await
                    .expect("handshake in time")
                    .expect("handshake"),
            )
        }
        None => Box::new(tcp),
    };
    if !mode.http2() {
        return Client::H1 {
            io,
            buf: Vec::new(),
            local,
        };
    }
    let (send, conn) = tokio::time::timeout(SAFETY, h2::client::handshake(io))
        .await
        .expect("h2 handshake in time")
        .expect("h2 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    Client::H2 { send, conn, local }
}

impl Client {
    /// The client's side of the connection: the peer the server sees.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Client::H1 { local, .. } | Client::H2 { local, .. } => *local,
        }
    }

    /// One GET; returns the status and the body.
    pub async fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        match self {
            Client::H1 { io, buf, .. } => {
                let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
                io.write_all(req.as_bytes()).await.expect("write");
                let r = read_response_buffered(io, buf, false).await;
                (r.status, r.body)
            }
            Client::H2 { send, .. } => {
                let req = Request::get(format!("http://localhost{path}"))
                    .body(())
                    .unwrap();
                h2_exchange(send, req, b"", true).await
            }
        }
    }

    /// Closes the connection the polite way: TLS `close_notify` and FIN on
    /// HTTP/1.1; on HTTP/2, no more requests (h2 sends GOAWAY and closes).
    pub async fn close(self) {
        match self {
            Client::H1 { mut io, .. } => {
                let _ = io.shutdown().await;
            }
            Client::H2 { send, conn, .. } => {
                drop(send);
                let _ = tokio::time::timeout(SAFETY, conn).await;
            }
        }
    }
}

/// Sends `request` on `send` with `body` as its DATA, ending the stream
/// when `end` (else the body stays open, as an upload still coming), and
/// reads the whole response (bounded by [`SAFETY`]); returns its status and
/// body. The request's stream is dropped then (h2 resets a half still open).
pub async fn h2_exchange(
    send: &h2::client::SendRequest<Bytes>,
    request: Request<()>,
    body: &'static [u8],
    end: bool,
) -> (u16, Vec<u8>) {
    tokio::time::timeout(SAFETY, async {
        let mut ready = send.clone().ready().await.expect("h2 ready");
        let (response, mut stream) = ready
            .send_request(request, end && body.is_empty())
            .expect("send");
        if !body.is_empty() {
            stream
                .send_data(Bytes::from_static(body), end)
                .expect("data");
        }
        let response = response.await.expect("h2 response");
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("h2 body");
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        (status, out)
    })
    .await
    .expect("HTTP/2 response in time")
}

/// The server's lifecycle events, paired: each close matches one open.
pub struct Events {
    rx: std::sync::mpsc::Receiver<ConnectionEvent>,
    open: HashMap<u64, bool>,
}

/// What a `Closed` event said.
#[derive(Debug, Clone, Copy)]
pub struct Closed {
    pub reason: CloseReason,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Installs an `on_connection` hook on `builder` that feeds [`Events`].
pub fn hooked(builder: Builder) -> (Builder, Events) {
    let (tx, rx) = std::sync::mpsc::channel();
    let builder = builder.on_connection(move |e| {
        let _ = tx.send(e.clone());
    });
    (
        builder,
        Events {
            rx,
            open: HashMap::new(),
        },
    )
}

impl Events {
    /// Waits (bounded) for the next close and checks it pairs with an open.
    pub async fn next_close(&mut self) -> Closed {
        loop {
            let rx = &self.rx;
            let event = tokio::task::block_in_place(|| rx.recv_timeout(SAFETY))
                .expect("a lifecycle event in time");
            match event {
                ConnectionEvent::Opened { id, .. } => {
                    assert!(self.open.insert(id, true).is_none(), "opened twice");
                }
                ConnectionEvent::Closed {
                    id,
                    reason,
                    requests,
                    bytes_in,
                    bytes_out,
                    ..
                } => {
                    assert_eq!(
                        self.open.remove(&id),
                        Some(true),
                        "closed twice or unopened"
                    );
                    return Closed {
                        reason,
                        requests,
                        bytes_in,
                        bytes_out,
                    };
                }
                _ => {}
            }
        }
    }

    /// True when every connection opened so far was reported closed.
    pub fn all_closed(&mut self) -> bool {
        while let Ok(event) = self.rx.try_recv() {
            match event {
                ConnectionEvent::Opened { id, .. } => {
                    self.open.insert(id, true);
                }
                ConnectionEvent::Closed { id, .. } => {
                    self.open.remove(&id);
                }
                _ => {}
            }
        }
        self.open.is_empty()
    }
}
