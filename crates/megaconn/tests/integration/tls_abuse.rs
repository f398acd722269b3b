//! TLS peers that overrun a limit or break the protocol, against a real
//! server: a ClientHello cut into tiny records fails at the 64 KiB a TLS
//! stream buffers, with a `decode_error` alert, as a handshake failure with
//! a limit label of its own (a real one cut as finely still completes), and
//! so do a TLS 1.2 ClientKeyExchange after our ServerHello and a second
//! ClientHello after a HelloRetryRequest (our records still plaintext);
//! once ours are encrypted (a message after a TLS 1.3 ServerHello, or after
//! the handshake) the alert is encrypted, and the client reads it; a record
//! header announcing too much is refused at once;
//! after the handshake, a record that does not decrypt (under HTTP/1.1 and
//! HTTP/2) and a flood of KeyUpdate requests each get an alert and close as
//! a protocol error (`protocol_error`, counted), not as an I/O error.

use std::io::{Read, Write};
use std::sync::Arc;

use megaconn::{CloseReason, ProtocolDetail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;

use common::modes::{hooked, Events};
use common::tls::{
    blocking_client, connect, h2_settings_exchanged, http1_get, one_byte_records, sealed_get,
    through_server_flight, tiny_record_hello, tiny_record_message, Ca,
};
use common::{closed_as, TestServer, SAFETY};

/// The most ciphertext a TLS stream buffers (`tls_io::MAX_BUFFERED`).
const MAX_BUFFERED: usize = 64 * 1024;

/// A fatal `decode_error` alert, in the clear.
const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50];

/// A TLS server with the test app and no handshake timeout: a server that
/// buffered on would hold the client until the test's `SAFETY` bound, not
/// close it at the default 10 s as if the limit had.
async fn tls_server(ca: &Ca) -> (TestServer, Events) {
    let tls = ca.server(&["localhost"]).handshake_timeout(None);
    let (builder, events) = hooked(megaconn::Server::builder().workers(1).tls(tls));
    (TestServer::start(builder).await, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_in_tiny_records_fails_at_the_buffer_limit_with_an_alert() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    // Exactly the limit: the server reads all of it, so its close is a FIN
    // after the alert, not a reset that could destroy the alert.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&tiny_record_hello(MAX_BUFFERED))
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SAFETY, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes at the limit")
        .unwrap();
    assert_closed_at_the_limit(&server, &mut events, &answer).await;
    let stats = server.handle.stats();
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
    let metrics = server.handle.render_metrics();
    let metric = "megaconn_limit_hits_total{limit=\"tls_handshake_buffer\"} 1";
    assert!(metrics.lines().any(|l| l == metric), "{metrics}");
    server.stop().await;
}

/// Sends a ClientHello of `config`'s client and reads the server's answer
/// until it is the client's turn (the client then passes `check`); sends
/// `records` instead of what the client would, and returns what the server
/// answers to them until it closes.
async fn on_our_turn(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    records: Vec<u8>,
    check: impl FnOnce(&rustls::ClientConnection) + Send + 'static,
) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let (mut tcp, mut client) = blocking_client(addr, config);
        client.write_tls(&mut tcp).unwrap();
        while !client.wants_write() {
            client.read_tls(&mut tcp).unwrap();
            client.process_new_packets().unwrap();
        }
        check(&client);
        tcp.write_all(&records).unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer)
            .expect("the server closes at the limit");
        answer
    })
    .await
    .unwrap()
}

/// The same limit in a full TLS 1.2 handshake after our ServerHello (a
/// ClientKeyExchange cut into tiny records): our records are plaintext
/// until that handshake completes, so the `decode_error` alert goes in the
/// clear (it got nothing: only a handshake before our ServerHello had its
/// alert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_client_key_exchange_in_tiny_records_fails_at_the_limit_with_an_alert() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    let config = ca.client_versions(&[b"http/1.1"], &[&rustls::version::TLS12]);
    // After the server's flight (to its ServerHelloDone), a ClientKeyExchange
    // (16) promising 65,000 bytes, to the limit.
    let records = tiny_record_message(0x10, MAX_BUFFERED);
    let answer = on_our_turn(server.addr, config, records, |client| {
        let version = client.protocol_version();
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    })
    .await;
    assert_closed_at_the_limit(&server, &mut events, &answer).await;
    server.stop().await;
}

/// The server's `answer` was the `decode_error` alert, and its next close
/// a failed handshake at the limit, counted under its label.
async fn assert_closed_at_the_limit(server: &TestServer, events: &mut Events, answer: &[u8]) {
    assert_eq!(answer, DECODE_ERROR_ALERT);
    assert_handshake_closed_at_the_limit(server, events).await;
}

/// The server's next close was a failed handshake at the limit, counted
/// under its label.
async fn assert_handshake_closed_at_the_limit(server: &TestServer, events: &mut Events) {
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::TlsHandshakeFailed, "{closed:?}");
    let stats = server.handle.stats();
    assert!(
        stats.limit_hits.contains(&("tls_handshake_buffer", 1)),
        "{:?}",
        stats.limit_hits
    );
}

/// In TLS 1.3 after a HelloRetryRequest, our records stay plaintext until
/// the second ClientHello: a second ClientHello cut into tiny records gets
/// the `decode_error` alert too (it got none: a version was agreed). The
/// client offers a key share for a group the server lacks (secp521r1) and
/// supports x25519, so the server asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_hello_in_tiny_records_fails_at_the_limit_with_an_alert() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![&Unsupported, rustls::crypto::ring::kx_group::X25519];
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let records = tiny_record_hello(MAX_BUFFERED);
    let answer = on_our_turn(server.addr, Arc::new(config), records, |client| {
        let kind = client.handshake_kind();
        assert_eq!(kind, Some(rustls::HandshakeKind::FullWithHelloRetryRequest));
    })
    .await;
    // The ChangeCipherSpec the server sends after its HelloRetryRequest
    // (middlebox compatibility), if the client did not read it.
    let ccs = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01];
    let answer = answer.strip_prefix(&ccs[..]).unwrap_or(&answer);
    assert_closed_at_the_limit(&server, &mut events, answer).await;
    server.stop().await;
}

/// After a TLS 1.3 ServerHello the same limit (a message in place of the
/// client's Finished, a byte per record under the client's handshake keys:
/// a Certificate, which megaconn never asks for) gets the `decode_error`
/// alert, encrypted as our records are from then on, and the client reads
/// it; the close is a failed handshake at the limit. It got no alert:
/// rustls' unbuffered API has no call to queue one under its keys
/// (`TlsIo::overrun` makes rustls reject input of its own instead). A
/// client library sends no such message of itself, so its records are
/// sealed here with the secret the client logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_message_after_our_server_hello_in_tiny_records_gets_an_encrypted_alert() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    let alert = sealed_tiny_records_sent(&server, &ca, Sealed::InsteadOfFinished).await;
    assert_eq!(alert, Some(rustls::AlertDescription::DecodeError));
    assert_handshake_closed_at_the_limit(&server, &mut events).await;
    server.stop().await;
}

/// After the handshake the same limit (a KeyUpdate that never completes,
/// a byte per record) closes the connection as a protocol error, after the
/// `decode_error` alert, encrypted, which the client reads after its
/// session tickets. It got none (and a plaintext one it would have had to
/// reject).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_records_after_the_handshake_close_at_the_limit_with_an_encrypted_alert() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    let alert = sealed_tiny_records_sent(&server, &ca, Sealed::AfterHandshake).await;
    assert_eq!(alert, Some(rustls::AlertDescription::DecodeError));
    let closed = events.next_close().await;
    assert_eq!(
        closed.reason,
        CloseReason::Protocol(ProtocolDetail::Tls),
        "{closed:?}"
    );
    server.stop().await;
}

/// Where a sealing client sends its handshake message in tiny records.
#[derive(Debug, Clone, Copy)]
enum Sealed {
    /// In place of its Finished, under its handshake keys: a Certificate
    /// (11), which megaconn never asks for.
    InsteadOfFinished,
    /// After its Finished, under its first application keys: a KeyUpdate
    /// (24).
    AfterHandshake,
}

/// A [`sealing_client`] reads our whole flight, to our Finished, and sends
/// a handshake message in tiny records ([`sealed_tiny_records`]) where
/// `sealed` says: what it makes of all the server sends until it closes,
/// the alert it received, if any.
async fn sealed_tiny_records_sent(
    server: &TestServer,
    ca: &Ca,
    sealed: Sealed,
) -> Option<rustls::AlertDescription> {
    let (addr, log) = (server.addr, Arc::new(Secrets::default()));
    let config = sealing_client(ca, log.clone());
    tokio::task::spawn_blocking(move || {
        let (mut tcp, mut client) = through_server_flight(addr, config);
        let (label, kind) = match sealed {
            Sealed::InsteadOfFinished => ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", 0x0b),
            Sealed::AfterHandshake => {
                while client.wants_write() {
                    client.write_tls(&mut tcp).unwrap();
                }
                ("CLIENT_TRAFFIC_SECRET_0", 0x18)
            }
        };
        tcp.write_all(&sealed_tiny_records(kind, &log.get(label)))
            .unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer)
            .expect("the server closes at the limit");
        let mut rest = &answer[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            match client.process_new_packets() {
                Err(rustls::Error::AlertReceived(alert)) => return Some(alert),
                Err(e) => panic!("the client rejects the answer: {e}"),
                Ok(_) => {}
            }
        }
        None
    })
    .await
    .unwrap()
}

/// The suite the sealing client speaks: ChaCha20-Poly1305, whose 32-byte
/// key rustls' `AeadKey` takes as it is.
const SEALING_SUITE: rustls::SupportedCipherSuite =
    rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256;

/// A client's secrets by their key-log label (`CLIENT_TRAFFIC_SECRET_0`).
#[derive(Debug, Default)]
struct Secrets(std::sync::Mutex<Vec<(String, Vec<u8>)>>);

impl rustls::KeyLog for Secrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut secrets = self.0.lock().unwrap();
        secrets.push((label.to_owned(), secret.to_vec()));
    }
}

impl Secrets {
    fn get(&self, label: &str) -> Vec<u8> {
        let secrets = self.0.lock().unwrap();
        let found = secrets.iter().find(|(l, _)| l == label);
        found.unwrap_or_else(|| panic!("{label} logged")).1.clone()
    }
}

/// A TLS 1.3 client of [`SEALING_SUITE`] trusting `ca`, its secrets
/// logged to `log`.
fn sealing_client(ca: &Ca, log: Arc<Secrets>) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![SEALING_SUITE];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.key_log = log;
    Arc::new(config)
}

/// The first [`MAX_BUFFERED`] bytes of a handshake message of type `kind`
/// promising 65,000 bytes, a byte per record, sealed from sequence 0 under
/// the client's traffic `secret` (its key and IV by HKDF-Expand-Label,
/// RFC 8446 §7.3): a message the server buffers and never completes.
fn sealed_tiny_records(kind: u8, secret: &[u8]) -> Vec<u8> {
    use rustls::crypto::cipher::{AeadKey, Iv, OutboundChunks, OutboundPlainMessage};
    let suite = SEALING_SUITE.tls13().unwrap();
    let prk = rustls::crypto::tls13::OkmBlock::new(secret);
    let expander = suite.hkdf_provider.expander_for_okm(&prk);
    let expand_label = |label: &[u8], out: &mut [u8]| {
        let length = u16::try_from(out.len()).unwrap().to_be_bytes();
        let label_length = [u8::try_from(6 + label.len()).unwrap()];
        let info: [&[u8]; 5] = [&length, &label_length, b"tls13 ", label, &[0]];
        expander.expand_slice(&info, out).unwrap();
    };
    let (mut key, mut iv) = ([0u8; 32], [0u8; 12]);
    expand_label(b"key", &mut key);
    expand_label(b"iv", &mut iv);
    let mut sealer = suite.aead_alg.encrypter(AeadKey::from(key), Iv::new(iv));
    let mut message = vec![kind, 0x00, 0xfd, 0xe8];
    message.resize(4 + 65_000, 0);
    let mut wire = Vec::new();
    for (seq, byte) in (0..).zip(&message) {
        if wire.len() >= MAX_BUFFERED {
            break;
        }
        let plain = OutboundPlainMessage {
            typ: rustls::ContentType::Handshake,
            version: rustls::ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(std::slice::from_ref(byte)),
        };
        wire.extend(sealer.encrypt(plain, seq).unwrap().encode());
    }
    // Exactly the limit: the server reads all of it, so its close is a FIN
    // after the alert, not a reset that could destroy the alert.
    wire.truncate(MAX_BUFFERED);
    wire
}

/// A key exchange group the server does not support, offered first.
#[derive(Debug)]
struct Unsupported;

impl rustls::crypto::SupportedKxGroup for Unsupported {
    fn start(&self) -> Result<Box<dyn rustls::crypto::ActiveKeyExchange>, rustls::Error> {
        Ok(Box::new(Unsupported))
    }

    fn name(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::secp521r1
    }
}

impl rustls::crypto::ActiveKeyExchange for Unsupported {
    fn complete(self: Box<Self>, _: &[u8]) -> Result<rustls::crypto::SharedSecret, rustls::Error> {
        unreachable!("the server asks for another group")
    }

    fn pub_key(&self) -> &[u8] {
        &[4; 133]
    }

    fn group(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::secp521r1
    }
}

/// The limit leaves room: a real client's ClientHello, re-cut into 1-byte
/// records (six times its size on the wire), completes its handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_hello_in_one_byte_records_completes() {
    let ca = Ca::new();
    let (server, _events) = tls_server(&ca).await;
    let (addr, config) = (server.addr, ca.client(&[b"http/1.1"]));
    let response = tokio::task::spawn_blocking(move || {
        let (mut tcp, mut client) = blocking_client(addr, config);
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        let length = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        assert_eq!((hello[0], hello.len()), (0x16, 5 + length), "one record");
        let wire = one_byte_records(&hello[5..]);
        assert!(wire.len() < MAX_BUFFERED, "{} bytes", wire.len());
        tcp.write_all(&wire).unwrap();
        while client.is_handshaking() {
            client
                .complete_io(&mut tcp)
                .expect("the handshake completes");
        }
        let mut tls = rustls::Stream::new(&mut client, &mut tcp);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response);
        response
    })
    .await
    .unwrap();
    let head = String::from_utf8_lossy(&response);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    server.stop().await;
}

/// A record header that announces more than a record may hold (65,535
/// bytes, over TLS' 16 KiB + 2,048) is refused on its 5 bytes, before any
/// body: rustls' `decode_error`, in the clear before the handshake (a
/// failed handshake) and encrypted after it (a protocol error); nothing is
/// buffered waiting for the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_header_announcing_too_much_is_refused_at_once() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff])
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SAFETY, tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes without waiting for the body")
        .unwrap();
    assert_eq!(answer, DECODE_ERROR_ALERT);
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::TlsHandshakeFailed, "{closed:?}");

    let mut tls = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
    tls.get_mut()
        .0
        .write_all(&[0x17, 0x03, 0x03, 0xff, 0xff])
        .await
        .unwrap();
    assert_alert(&mut tls, rustls::AlertDescription::DecodeError).await;
    let closed = events.next_close().await;
    assert_eq!(
        closed.reason,
        CloseReason::Protocol(ProtocolDetail::Tls),
        "{closed:?}"
    );
    assert_eq!(server.handle.stats().protocol_errors, 2);
    server.stop().await;
}

/// After the handshake, a record whose tag does not check: rustls'
/// `bad_record_mac` alert reaches the client, and the close is a TLS
/// protocol error, counted, not an I/O error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decrypt_gets_the_alert_and_is_a_protocol_error() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    let mut tls = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
    send_a_bad_record(&mut tls).await;
    assert_protocol_error_close(&server, &mut events).await;
    server.stop().await;
}

/// Sends a request's record with its last byte (the tag's) flipped, and
/// reads until the server's `bad_record_mac` alert.
async fn send_a_bad_record(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) {
    let (tcp, session) = tls.get_mut();
    let mut record = sealed_get(session);
    *record.last_mut().unwrap() ^= 1;
    tcp.write_all(&record).await.unwrap();
    assert_alert(tls, rustls::AlertDescription::BadRecordMac).await;
}

/// The same under HTTP/2 once its handshake is done: h2 then keeps an I/O
/// error's kind and text, not its type, and the close still says TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decrypt_is_a_protocol_error_under_http2() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    let mut tls = connect(server.addr, ca.client(&[b"h2"]), "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2_settings_exchanged(&mut tls).await;
    send_a_bad_record(&mut tls).await;
    assert_protocol_error_close(&server, &mut events).await;
    server.stop().await;
}

/// rustls takes 32 KeyUpdate requests in a row with no application data
/// between them; the 33rd fails the session: the client hears why
/// (`unexpected_message`, patches/README.md: rustls sent no alert), and the
/// close is a TLS protocol error, counted, not the I/O error it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_key_update_requests_is_cut_as_a_protocol_error() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    let client = ca.client_versions(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let mut tls = connect(server.addr, client, "localhost").await;
    assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
    for _ in 0..40 {
        tls.get_mut().1.refresh_traffic_keys().unwrap();
    }
    tls.flush().await.unwrap();
    assert_alert(&mut tls, rustls::AlertDescription::UnexpectedMessage).await;
    assert_protocol_error_close(&server, &mut events).await;
    server.stop().await;
}

/// The client reads until the server's fatal alert `alert` (what the
/// server answered before it, such as KeyUpdates, is taken on the way).
async fn assert_alert(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    alert: rustls::AlertDescription,
) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(SAFETY, tls.read_to_end(&mut rest))
        .await
        .expect("the server answers");
    let error = read.expect_err("an alert, not an end");
    let received = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert_eq!(
        received,
        Some(&rustls::Error::AlertReceived(alert)),
        "{error:?}"
    );
}

/// The next close is a TLS protocol error, the only one so far, counted in
/// `protocol_errors` and as `protocol_error`, not `io_error`.
async fn assert_protocol_error_close(server: &TestServer, events: &mut Events) {
    let closed = events.next_close().await;
    assert_eq!(
        closed.reason,
        CloseReason::Protocol(ProtocolDetail::Tls),
        "{closed:?}"
    );
    let stats = server.handle.stats();
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
    assert_eq!(closed_as(&stats, "protocol_error"), 1, "{stats:?}");
    assert_eq!(closed_as(&stats, "io_error"), 0, "{stats:?}");
}
