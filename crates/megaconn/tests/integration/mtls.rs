//! Client certificates (mutual TLS, `TlsConfig::client_auth`), with real
//! rustls clients: a device's certificate from a CA of its own reaches the
//! handlers of every protocol (HTTP/1.1 and HTTP/2 as the
//! `PeerCertificates` request extension, through axum's `Extension`;
//! framed TCP's and Server-Sent Events' `Session`, a native WebSocket's
//! `WsSession`), also after
//! the connection parked, was pushed to while parked, and woke; a client
//! without a certificate, or with one from another CA, is refused with
//! rustls' alert and counted as `client_cert`; `Optional` lets a client
//! without one in; a reload reads the CA file again, and an SNI
//! certificate keeps client auth. Every wait is bounded and waits on a
//! condition (a counter, a byte), never on time alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use megaconn::{
    ClientAuth, ClientCa, ConnectionId, FramedHandler, Framing, Hub, PeerCertificates, Server,
    ServerHandle, Session, ShutdownSummary, SseHandler, TlsConfig, WebSocketHandler, WsMessage,
    WsSession,
};
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

use crate::common;
use common::msg::{
    frame, http_and_framed, message_routes, read_frame, read_head, read_ws_frame, ws_client_frame,
    WS_UPGRADE,
};
use common::tls::{handshake, http1_get_path, Ca};
use common::SAFETY;

/// How long an idle connection waits before it parks.
const PARK_IDLE_AFTER: Duration = Duration::from_millis(20);

/// A device's identity: its certificate (signed by a devices CA), its
/// serial number (what a CRL names) and key.
pub(crate) struct Device {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) serial: u64,
    pub(crate) key: PrivateKeyDer<'static>,
}

/// Serial numbers, each device its own.
static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

/// A certificate for device `cn` (its subject's CN), signed by `ca`.
pub(crate) fn device(ca: &Ca, cn: &str) -> Device {
    device_with(ca, cn, |_| {})
}

/// [`device`], its certificate's parameters changed by `change` first (a
/// validity period in the past, say).
pub(crate) fn device_with(
    ca: &Ca,
    cn: &str,
    change: impl FnOnce(&mut CertificateParams),
) -> Device {
    let mut params = CertificateParams::new(vec![format!("{cn}.devices.local")]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Fleet");
    params.distinguished_name.push(DnType::CommonName, cn);
    let serial = SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    change(&mut params);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    Device {
        der: cert.der().clone(),
        serial,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// A client trusting `server_ca`, offering `alpn`, presenting `device`'s
/// certificate if any.
pub(crate) fn client(server_ca: &Ca, alpn: &[&[u8]], device: Option<&Device>) -> Arc<ClientConfig> {
    server_ca.client_as(
        alpn,
        device.map(|d| (vec![d.der.clone()], d.key.clone_key())),
    )
}

/// What a handler says of its peer's certificate: its CN and its DER in
/// hex, or `none`.
fn who(peer: Option<&PeerCertificates>) -> String {
    match peer {
        Some(p) => format!(
            "{} {}",
            p.common_name().unwrap_or_default(),
            hex(p.end_entity())
        ),
        None => "none".into(),
    }
}

/// `device`'s answer from [`who`].
pub(crate) fn says(device: &Device, cn: &str) -> String {
    format!("{cn} {}", hex(&device.der))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The handler of framed TCP and WebSocket: answers every message with
/// [`who`], and reports each connection's id.
#[derive(Clone)]
struct Who {
    opens: mpsc::UnboundedSender<ConnectionId>,
}

impl FramedHandler for Who {
    type State = ();

    fn on_open(&self, _: &mut (), session: &Session) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), _: Bytes, session: &Session) -> Option<Bytes> {
        Some(Bytes::from(who(session.peer_certificates())))
    }
}

impl WebSocketHandler for Who {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), _: WsMessage, session: &WsSession) -> Option<WsMessage> {
        Some(WsMessage::Text(who(session.peer_certificates()).into()))
    }
}

impl SseHandler for Who {
    /// The first event: what the session says, then what the request's
    /// extension says.
    fn on_open(&self, request: &http::request::Parts, session: &Session) {
        let from_request = who(request.extensions.get::<PeerCertificates>());
        session.send(format!(
            "{} | {from_request}",
            who(session.peer_certificates())
        ));
    }
}

/// An axum handler that reads the certificate as `Extension`.
async fn whoami(peer: Option<axum::Extension<PeerCertificates>>) -> String {
    who(peer.as_ref().map(|axum::Extension(p)| p))
}

/// The address of the chain a request's `PeerCertificates` holds (the
/// same for every request that shares one copy), which stays allocated:
/// each request's is kept to the test's end, so a copy made afresh for a
/// later request cannot land where an earlier one was.
async fn chain(peer: axum::Extension<PeerCertificates>) -> String {
    static KEPT: std::sync::Mutex<Vec<PeerCertificates>> = std::sync::Mutex::new(Vec::new());
    let address = format!("{:p}", peer.chain().as_ptr());
    KEPT.lock().unwrap().push(peer.0);
    address
}

/// A server with HTTPS (`/whoami`, `/ws`) and a framed TLS listener
/// (length-prefixed), one worker, its connections parking after
/// [`PARK_IDLE_AFTER`]; its certificate from `server_ca`, client auth as
/// `tls` sets it.
pub(crate) struct Gateway {
    pub(crate) https: SocketAddr,
    framed: SocketAddr,
    pub(crate) server_ca: Ca,
    pub(crate) tls: TlsConfig,
    pub(crate) handle: ServerHandle,
    hub: Hub,
    opens: mpsc::UnboundedReceiver<ConnectionId>,
    task: tokio::task::JoinHandle<ShutdownSummary>,
}

impl Gateway {
    pub(crate) async fn start(auth: impl FnOnce(TlsConfig) -> TlsConfig) -> Gateway {
        let server_ca = Ca::named("Gateway CA");
        let tls = auth(server_ca.server(&["localhost", "api.localhost"]));
        let mut server = Server::builder()
            .workers(1)
            .park_idle_after(Some(PARK_IDLE_AFTER))
            .tls(tls.clone())
            .listen_tls_on("127.0.0.1:0".parse().unwrap())
            .listen_framed_tls_on("127.0.0.1:0".parse().unwrap(), Framing::length_prefixed(4))
            .listen()
            .expect("server binds");
        let (https, framed) = http_and_framed(&server);
        let (handle, hub) = (server.handle(), server.hub());
        let (opened, opens) = mpsc::unbounded_channel();
        let probe = Who { opens: opened };
        let app = message_routes(probe.clone(), |events| events)
            .route("/whoami", axum::routing::get(whoami))
            .route("/chain", axum::routing::get(chain));
        let running = server.framed(probe).start(app).expect("starts").run();
        let task = tokio::spawn(running);
        Gateway {
            https,
            framed,
            server_ca,
            tls,
            handle,
            hub,
            opens,
            task,
        }
    }

    /// A TLS connection to `addr` as `name` (SNI), offering `alpn`, as
    /// `device`; `Err` if the handshake fails on the client's side.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        name: &str,
        alpn: &[&[u8]],
        device: Option<&Device>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        handshake(tcp, client(&self.server_ca, alpn, device), name).await
    }

    /// `GET /whoami` over HTTP/1.1 as `device`: the answer.
    pub(crate) async fn http1_whoami(&self, device: Option<&Device>) -> String {
        let mut tls = self
            .connect(self.https, "localhost", &[b"http/1.1"], device)
            .await
            .expect("handshake");
        let (status, body) = get_whoami(&mut tls).await.expect("an answer");
        assert!(status.contains(" 200 "), "{status}");
        body
    }

    /// The handshakes counted as `outcome`.
    pub(crate) fn handshakes(&self, outcome: &str) -> u64 {
        common::handshakes(&self.handle.stats(), outcome)
    }

    /// Waits for `n` handshakes refused for the client's certificate.
    pub(crate) async fn wait_refusals(&self, n: u64) {
        common::wait_stats(&self.handle, "the refusals counted", |s| {
            s.tls_handshakes
                .iter()
                .any(|(o, c)| *o == "client_cert" && *c == n)
        })
        .await;
    }

    pub(crate) async fn stop(self) {
        common::shut_down(&self.handle, self.task).await;
    }
}

/// `GET /whoami` over HTTP/1.1 on `io`: status line and body, or the
/// error reading it (a refused client reads the server's alert).
pub(crate) async fn get_whoami<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
) -> std::io::Result<(String, String)> {
    http1_get_path(io, "/whoami").await
}

/// Reads one server text frame's payload.
async fn read_ws_text<S: AsyncRead + Unpin>(io: &mut S) -> String {
    let (first, payload) = read_ws_frame(io).await;
    assert_eq!(first, 0x81, "a text frame");
    String::from_utf8(payload).unwrap()
}

/// Client auth required against `devices`' roots.
pub(crate) fn required(devices: &Ca) -> impl FnOnce(TlsConfig) -> TlsConfig + '_ {
    |tls| {
        tls.client_auth(ClientAuth::Required(ClientCa::from_pem(
            devices.cert.pem().as_bytes(),
        )))
        .unwrap()
    }
}

/// The rustls error a refused client reads (its handshake may look done
/// on its side under TLS 1.3: the server's alert comes with its next
/// read), if it is one.
pub(crate) fn alert_of(e: &std::io::Error) -> Option<rustls::AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// A client refused by the server: the alert it read, from the handshake
/// or (TLS 1.3) its first read.
pub(crate) async fn refused(
    gateway: &Gateway,
    device: Option<&Device>,
) -> rustls::AlertDescription {
    let e = match gateway
        .connect(gateway.https, "localhost", &[b"http/1.1"], device)
        .await
    {
        Err(e) => e,
        Ok(mut tls) => get_whoami(&mut tls).await.expect_err("refused"),
    };
    alert_of(&e).unwrap_or_else(|| panic!("not an alert: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_certificate_reaches_http1_and_http2_handlers() {
    let devices = Ca::named("Devices CA");
    let gateway = Gateway::start(required(&devices)).await;
    let d7 = device(&devices, "device-7");

    assert_eq!(gateway.http1_whoami(Some(&d7)).await, says(&d7, "device-7"));
    let h2 = gateway
        .connect(gateway.https, "localhost", &[b"h2"], Some(&d7))
        .await
        .expect("handshake");
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, body) = crate::tls::h2_get(h2, "/whoami", None).await;
    assert_eq!(status, 200);
    assert_eq!(body, says(&d7, "device-7"));
    // A Server-Sent Events stream: its session, and the request that
    // opened it (an HTTP/1.0 request: the body ends with the close, no
    // chunks around the event).
    let mut sse = gateway
        .connect(gateway.https, "localhost", &[b"http/1.1"], Some(&d7))
        .await
        .expect("handshake");
    sse.write_all(b"GET /events HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut sse).await;
    assert!(
        head.starts_with("HTTP/1.0 200 ") || head.starts_with("HTTP/1.1 200 "),
        "{head}"
    );
    let expected = format!("data: {0} | {0}\n\n", says(&d7, "device-7"));
    let mut event = vec![0u8; expected.len()];
    tokio::time::timeout(SAFETY, sse.read_exact(&mut event))
        .await
        .expect("the first event in time")
        .unwrap();
    assert_eq!(String::from_utf8(event).unwrap(), expected);
    assert_eq!(gateway.handshakes("completed"), 3);
    assert_eq!(gateway.handshakes("client_cert"), 0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_refuses_a_client_without_a_certificate_or_from_another_ca() {
    let devices = Ca::named("Devices CA");
    let gateway = Gateway::start(required(&devices)).await;

    // TLS 1.3's alert for no certificate (RFC 8446 §4.4.2.4).
    let alert = refused(&gateway, None).await;
    assert_eq!(alert, rustls::AlertDescription::CertificateRequired);
    gateway.wait_refusals(1).await;
    // Signed by a CA the server does not trust.
    let stranger = device(&Ca::named("Other CA"), "device-9");
    let alert = refused(&gateway, Some(&stranger)).await;
    assert_eq!(alert, rustls::AlertDescription::UnknownCA);
    gateway.wait_refusals(2).await;
    // Counted apart from other failures, and as a close.
    assert_eq!(gateway.handshakes("failed"), 0);
    let metrics = gateway.handle.render_metrics();
    let line = "megaconn_tls_handshakes_total{outcome=\"client_cert\"} 2";
    assert!(
        metrics.lines().any(|l| l == line),
        "{line} not in {metrics}"
    );
    // The framed listener refuses alike.
    let framed = gateway
        .connect(gateway.framed, "localhost", &[], None)
        .await;
    let e = match framed {
        Err(e) => e,
        Ok(mut tls) => {
            let _ = tls.write_all(&frame(b"hi")).await;
            let mut byte = [0u8; 1];
            tokio::time::timeout(SAFETY, tls.read(&mut byte))
                .await
                .expect("the alert in time")
                .expect_err("refused")
        }
    };
    assert_eq!(
        alert_of(&e),
        Some(rustls::AlertDescription::CertificateRequired)
    );
    gateway.wait_refusals(3).await;
    // A device of the fleet still gets in.
    let d1 = device(&devices, "device-1");
    assert_eq!(gateway.http1_whoami(Some(&d1)).await, says(&d1, "device-1"));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_lets_a_client_without_a_certificate_in_with_none() {
    let devices = Ca::named("Devices CA");
    let gateway = Gateway::start(|tls| {
        tls.client_auth(ClientAuth::Optional(ClientCa::from_pem(
            devices.cert.pem().as_bytes(),
        )))
        .unwrap()
    })
    .await;
    assert_eq!(gateway.http1_whoami(None).await, "none");
    let mut framed = gateway
        .connect(gateway.framed, "localhost", &[], None)
        .await
        .expect("handshake");
    framed.write_all(&frame(b"who")).await.unwrap();
    assert_eq!(read_frame(&mut framed).await, b"none");
    // One that sends a certificate is held to it.
    let d3 = device(&devices, "device-3");
    assert_eq!(gateway.http1_whoami(Some(&d3)).await, says(&d3, "device-3"));
    let stranger = device(&Ca::named("Other CA"), "device-9");
    let alert = refused(&gateway, Some(&stranger)).await;
    assert_eq!(alert, rustls::AlertDescription::UnknownCA);
    gateway.wait_refusals(1).await;
    gateway.stop().await;
}

/// A parked framed TLS connection, pushed to while parked (records its
/// parked session sealed), then woken by its device's message: the
/// handler still reads the device's certificate. The same for WSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_framed_or_wss_connection_still_knows_its_device_after_a_push_and_a_wake() {
    let devices = Ca::named("Devices CA");
    let mut gateway = Gateway::start(required(&devices)).await;
    let d5 = device(&devices, "device-5");
    let expected = says(&d5, "device-5");

    // Framed TCP.
    let mut framed = gateway
        .connect(gateway.framed, "localhost", &[], Some(&d5))
        .await
        .expect("handshake");
    framed.write_all(&frame(b"who")).await.unwrap();
    assert_eq!(read_frame(&mut framed).await, expected.as_bytes());
    let id = tokio::time::timeout(SAFETY, gateway.opens.recv())
        .await
        .expect("on_open in time")
        .unwrap();
    parked_then_pushed(&gateway, id, 1).await;
    assert_eq!(read_frame(&mut framed).await, b"pushed");
    let before = wakes(&gateway.handle);
    framed.write_all(&frame(b"who")).await.unwrap();
    assert_eq!(read_frame(&mut framed).await, expected.as_bytes());
    assert!(wakes(&gateway.handle) > before, "the message woke it");

    // WebSocket over TLS.
    let mut wss = gateway
        .connect(gateway.https, "localhost", &[b"http/1.1"], Some(&d5))
        .await
        .expect("handshake");
    wss.write_all(WS_UPGRADE).await.unwrap();
    let head = read_head(&mut wss).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    wss.write_all(&ws_client_frame(0x81, b"who", true))
        .await
        .unwrap();
    assert_eq!(read_ws_text(&mut wss).await, expected);
    let id = tokio::time::timeout(SAFETY, gateway.opens.recv())
        .await
        .expect("on_open in time")
        .unwrap();
    parked_then_pushed(&gateway, id, 2).await;
    assert_eq!(read_ws_text(&mut wss).await, "pushed");
    let before = wakes(&gateway.handle);
    wss.write_all(&ws_client_frame(0x81, b"who", true))
        .await
        .unwrap();
    assert_eq!(read_ws_text(&mut wss).await, expected);
    assert!(wakes(&gateway.handle) > before, "the message woke it");
    gateway.stop().await;
}

fn wakes(handle: &ServerHandle) -> u64 {
    let s = handle.stats();
    s.wakes_cold + s.wakes_hot
}

/// Waits for connection `id` to park (`parked` connections then), and
/// pushes `pushed` to it while it is parked.
async fn parked_then_pushed(gateway: &Gateway, id: ConnectionId, parked: i64) {
    common::wait_stats(&gateway.handle, "the connection parked", |s| {
        s.connections_parked == parked
    })
    .await;
    let pushes = gateway.handle.stats().messages.pushes;
    assert_eq!(gateway.hub.send(id, "pushed"), Ok(()));
    common::wait_stats(&gateway.handle, "the push written, still parked", |s| {
        s.messages.pushes == pushes + 1 && s.connections_parked == parked
    })
    .await;
}

/// `TlsConfig::reload` reads the client CA file again (a device of the
/// old CA is refused after it, one of the new let in), and a certificate
/// chosen by SNI keeps client auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_client_ca_again_and_sni_keeps_client_auth() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("devices-ca.pem");
    let (old, new) = (Ca::named("Devices CA 1"), Ca::named("Devices CA 2"));
    std::fs::write(&ca_file, old.cert.pem()).unwrap();
    let path = ca_file.clone();
    let gateway = Gateway::start(move |tls| {
        tls.client_auth(ClientAuth::Required(ClientCa::from_pem_file(&path)))
            .unwrap()
    })
    .await;
    // A certificate chosen by SNI, added on the running server after
    // client auth: the configuration is rebuilt with its verifier.
    let api = gateway.server_ca.leaf(&["api.localhost"]);
    let tls = gateway
        .tls
        .clone()
        .with_sni_pem(
            "api.localhost",
            api.cert_pem.as_bytes(),
            api.key_pem.as_bytes(),
        )
        .unwrap();
    let (d_old, d_new) = (device(&old, "old-1"), device(&new, "new-1"));
    let mut tls_api = gateway
        .connect(gateway.https, "api.localhost", &[b"http/1.1"], Some(&d_old))
        .await
        .expect("handshake");
    let served = tls_api.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(served, api.der, "the SNI certificate");
    assert_eq!(
        get_whoami(&mut tls_api).await.unwrap().1,
        says(&d_old, "old-1")
    );
    let no_cert = gateway
        .connect(gateway.https, "api.localhost", &[b"http/1.1"], None)
        .await;
    let e = match no_cert {
        Err(e) => e,
        Ok(mut tls) => get_whoami(&mut tls).await.expect_err("refused"),
    };
    assert_eq!(
        alert_of(&e),
        Some(rustls::AlertDescription::CertificateRequired)
    );
    gateway.wait_refusals(1).await;
    assert_eq!(
        refused(&gateway, Some(&d_new)).await,
        rustls::AlertDescription::UnknownCA
    );
    gateway.wait_refusals(2).await;

    std::fs::write(&ca_file, new.cert.pem()).unwrap();
    tls.reload().unwrap();
    assert_eq!(
        gateway.http1_whoami(Some(&d_new)).await,
        says(&d_new, "new-1")
    );
    assert_eq!(
        refused(&gateway, Some(&d_old)).await,
        rustls::AlertDescription::UnknownCA
    );
    gateway.wait_refusals(3).await;
    // Open connections keep the certificate they were verified with.
    assert_eq!(
        get_whoami(&mut tls_api).await.unwrap().1,
        says(&d_old, "old-1")
    );
    // A CA file that no longer reads is an error, and nothing changes.
    std::fs::write(&ca_file, "not PEM").unwrap();
    assert!(tls.reload().is_err());
    assert_eq!(
        gateway.http1_whoami(Some(&d_new)).await,
        says(&d_new, "new-1")
    );
    gateway.stop().await;
}

/// A device revoked by a CRL of its CA is refused (`certificate_revoked`),
/// counted as the others; its CA's other devices get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_refused() {
    let devices = Ca::named("Devices CA");
    let (revoked, fine) = (device(&devices, "lost-1"), device(&devices, "fine-2"));
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(revoked.serial),
            revocation_time: rcgen::date_time_ymd(2024, 1, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&devices.cert, &devices.key)
    .unwrap();
    let gateway = Gateway::start(|tls| {
        tls.client_auth(ClientAuth::Required(
            ClientCa::from_pem(devices.cert.pem().as_bytes())
                .with_crl_pem(crl.pem().unwrap().as_bytes()),
        ))
        .unwrap()
    })
    .await;
    assert_eq!(
        refused(&gateway, Some(&revoked)).await,
        rustls::AlertDescription::CertificateRevoked
    );
    gateway.wait_refusals(1).await;
    assert_eq!(
        gateway.http1_whoami(Some(&fine)).await,
        says(&fine, "fine-2")
    );
    gateway.stop().await;
}
