//! TLS against a real server on 127.0.0.1 with a rustls client trusting a test
//! CA made by rcgen: ALPN picks HTTP/1.1 or HTTP/2, sessions resume, SNI picks
//! certificates, a reload swaps the certificate for new connections only, and
//! a silent client is cut at the handshake timeout.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use megaconn::{Body, BoxError, TlsConfig};
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;

use common::tls::{connect, http1_get, write_pair, Ca};
use common::{AppServer, SAFETY};

type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// A server on one worker that answers `/echo` with the request's body and
/// anything else with the HTTP version it was asked over.
fn start(tls: TlsConfig) -> AppServer {
    let service = tower::service_fn(|req: Request<Body>| async move {
        let body = match req.uri().path() {
            "/echo" => req.into_body().map_err(BoxError::from).boxed_unsync(),
            _ => Full::new(Bytes::from(format!("Hello over {:?}", req.version())))
                .map_err(|e| match e {})
                .boxed_unsync(),
        };
        Ok::<Response<TestBody>, Infallible>(Response::new(body))
    });
    AppServer::one_worker(megaconn::Server::builder().tls(tls), service)
}

/// One HTTP/2 request on `io` (a `POST` of `body` if any): its status
/// and body. (`mtls.rs` asks with it too.)
pub(crate) async fn h2_get<S>(io: S, path: &str, body: Option<&'static [u8]>) -> (StatusCode, Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::time::timeout(SAFETY, async {
        let (client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        let req = Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri(format!("https://localhost{path}"))
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, body.is_none()).unwrap();
        if let Some(b) = body {
            send.send_data(Bytes::from_static(b), true).unwrap();
        }
        let resp = resp.await.unwrap();
        let status = resp.status();
        let mut recv = resp.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        (status, Bytes::from(out))
    })
    .await
    .expect("HTTP/2 response in time")
}

#[tokio::test]
async fn alpn_selects_http1_or_http2() {
    let ca = Ca::new();
    let server = start(ca.server(&["localhost"]));

    // http/1.1 by ALPN, two requests on one connection.
    let mut tls = connect(server.addr(), ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    for _ in 0..2 {
        let (status, body) = http1_get(&mut tls).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "Hello over HTTP/1.1");
    }

    // No ALPN at all: HTTP/1.1.
    let mut tls = connect(server.addr(), ca.client(&[]), "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert_eq!(http1_get(&mut tls).await.1, "Hello over HTTP/1.1");

    // h2 by ALPN (a client offering both gets h2, the server's preference).
    let tls = connect(server.addr(), ca.client(&[b"h2", b"http/1.1"]), "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, body) = h2_get(tls, "/", None).await;
    assert_eq!(status, 200);
    assert_eq!(body, "Hello over HTTP/2.0");
    let tls = connect(server.addr(), ca.client(&[b"h2"]), "localhost").await;
    let (status, body) = h2_get(tls, "/echo", Some(b"echo me over h2 and tls")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "echo me over h2 and tls");
    server.summary().await;
}

#[tokio::test]
async fn sessions_resume_with_tls13_tickets_and_tls12() {
    let ca = Ca::new();
    let server = start(ca.server(&["localhost"]));
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let client = ca.client_versions(&[b"http/1.1"], versions);
        let mut first = connect(server.addr(), client.clone(), "localhost").await;
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
        // A full exchange, so TLS 1.3 tickets (sent after the handshake) are read.
        http1_get(&mut first).await;
        let mut second = connect(server.addr(), client.clone(), "localhost").await;
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{:?} resumes",
            second.get_ref().1.protocol_version()
        );
        assert_eq!(http1_get(&mut second).await.0, "HTTP/1.1 200 OK");
    }
    server.summary().await;
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let ca = Ca::new();
    let default = ca.leaf(&["localhost"]);
    let api = ca.leaf(&["api.test"]);
    let wild = ca.leaf(&["*.apps.test"]);
    let tls = TlsConfig::from_pem(default.cert_pem.as_bytes(), default.key_pem.as_bytes())
        .unwrap()
        .with_sni_pem("api.test", api.cert_pem.as_bytes(), api.key_pem.as_bytes())
        .unwrap()
        .with_sni_pem(
            "*.apps.test",
            wild.cert_pem.as_bytes(),
            wild.key_pem.as_bytes(),
        )
        .unwrap();
    let server = start(tls);
    let client = ca.client(&[b"http/1.1"]);
    for (name, expected) in [
        ("localhost", &default),
        ("api.test", &api),
        ("one.apps.test", &wild),
    ] {
        let tls = connect(server.addr(), client.clone(), name).await;
        let seen = &tls.get_ref().1.peer_certificates().unwrap()[0];
        assert_eq!(seen, &expected.der, "certificate for {name}");
    }
    server.summary().await;
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections_only() {
    let ca = Ca::new();
    let old = ca.leaf(&["localhost"]);
    let new = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &old);
    let tls = TlsConfig::from_pem_files(&cert, &key).unwrap();
    let server = start(tls.clone());
    // Fresh client configs: no resumption, so each handshake shows its certificate.
    let mut before = connect(server.addr(), ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(before.get_ref().1.peer_certificates().unwrap()[0], old.der);
    http1_get(&mut before).await;

    // A bad file is refused and changes nothing.
    std::fs::write(&key, "not a key").unwrap();
    assert!(tls.reload().is_err());
    let check = connect(server.addr(), ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(check.get_ref().1.peer_certificates().unwrap()[0], old.der);
    // Closed now: a connection that never sent a request is spared by
    // shutdown until its read_header_timeout (10 s), as Go spares new ones,
    // which `stop` below would wait for.
    drop(check);

    write_pair(dir.path(), &new);
    tls.reload().expect("reload");
    // The open connection keeps working.
    assert_eq!(http1_get(&mut before).await.0, "HTTP/1.1 200 OK");
    // A new one sees the new certificate.
    let mut after = connect(server.addr(), ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(after.get_ref().1.peer_certificates().unwrap()[0], new.der);
    assert_eq!(http1_get(&mut after).await.0, "HTTP/1.1 200 OK");
    server.summary().await;
}

/// A leaf of `ca` for `name` that expires on `(year, month, day)`,
/// `seconds` after midnight (UTC).
fn leaf_until(ca: &Ca, name: &str, (y, m, d): (i32, u8, u8), seconds: u64) -> common::tls::Leaf {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(y, m, d) + Duration::from_secs(seconds);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    common::tls::Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// A certificate reload's outcome and each certificate's expiry are on
/// `/metrics`: `megaconn_tls_reloads_total{outcome}` counts a reload that
/// failed (the old certificate stays) and one that worked, and
/// `megaconn_tls_certificate_expiry_seconds{server_name}` says each chain's
/// notAfter as a Unix time, a UTCTime (before 2050) and a GeneralizedTime
/// (from 2050) alike, the new one once reloaded. Neither existed: a renewal
/// that did not take, or a certificate about to lapse, showed nowhere.
#[tokio::test]
async fn reloads_and_certificate_expiry_are_metrics() {
    let ca = Ca::new();
    let old = leaf_until(&ca, "localhost", (2031, 5, 17), 0);
    let sni = leaf_until(&ca, "api.test", (2051, 1, 2), 3 * 3600 + 4 * 60 + 5);
    let new = leaf_until(&ca, "localhost", (2040, 2, 29), 0);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &old);
    let tls = TlsConfig::from_pem_files(&cert, &key)
        .unwrap()
        .with_sni_pem("api.test", sni.cert_pem.as_bytes(), sni.key_pem.as_bytes())
        .unwrap();
    let server = start(tls.clone());
    // Served, so that the stop below finds the server running (a stop
    // before its workers took their listeners fails its start).
    let mut client = connect(server.addr(), ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut client).await.0, "HTTP/1.1 200 OK");
    drop(client);
    let metrics = || server.handle.render_metrics();
    let has = |text: &str, line: &str| assert!(text.contains(line), "{line} not in {text}");
    let text = metrics();
    has(&text, "megaconn_tls_reloads_total{outcome=\"ok\"} 0\n");
    has(&text, "megaconn_tls_reloads_total{outcome=\"failed\"} 0\n");
    has(
        &text,
        "megaconn_tls_certificate_expiry_seconds{server_name=\"default\"} 1936742400\n",
    );
    has(
        &text,
        "megaconn_tls_certificate_expiry_seconds{server_name=\"api.test\"} 2556241445\n",
    );

    std::fs::write(&key, "not a key").unwrap();
    assert!(tls.reload().is_err());
    let text = metrics();
    has(&text, "megaconn_tls_reloads_total{outcome=\"failed\"} 1\n");
    has(
        &text,
        "megaconn_tls_certificate_expiry_seconds{server_name=\"default\"} 1936742400\n",
    );

    write_pair(dir.path(), &new);
    tls.reload().expect("reload");
    let text = metrics();
    has(&text, "megaconn_tls_reloads_total{outcome=\"ok\"} 1\n");
    has(&text, "megaconn_tls_reloads_total{outcome=\"failed\"} 1\n");
    has(
        &text,
        "megaconn_tls_certificate_expiry_seconds{server_name=\"default\"} 2214086400\n",
    );
    has(
        &text,
        "megaconn_tls_certificate_expiry_seconds{server_name=\"api.test\"} 2556241445\n",
    );
    let stats = server.handle.stats().tls.expect("a TLS server's stats");
    assert_eq!((stats.reloads_ok, stats.reloads_failed), (1, 1));
    server.summary().await;
}

#[tokio::test]
async fn a_silent_client_is_cut_at_the_handshake_timeout() {
    let ca = Ca::new();
    let tls = ca
        .server(&["localhost"])
        .handshake_timeout(Some(Duration::from_millis(300)));
    let server = start(tls);
    let started = tokio::time::Instant::now();
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    // Say nothing; the server closes at the timeout.
    let n = tokio::time::timeout(SAFETY, tcp.read(&mut buf))
        .await
        .expect("the server closes a silent client")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The socket closes as the handshake is dropped, just before the count.
    let deadline = tokio::time::Instant::now() + SAFETY;
    while server.handle.stats().timeouts != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // And a real client is still served.
    let mut tls = connect(server.addr(), ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
    server.summary().await;
}

#[test]
fn bad_pem_is_refused_with_a_message() {
    let err = TlsConfig::from_pem(b"nothing here", b"nor here").unwrap_err();
    assert!(!err.to_string().is_empty());
    let ca = Ca::new();
    let a = ca.leaf(&["localhost"]);
    let b = ca.leaf(&["localhost"]);
    let err = TlsConfig::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err =
        TlsConfig::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

/// Polls the server's counters until `ready` holds (bounded by `SAFETY`).
async fn wait_stats(
    server: &AppServer,
    what: &str,
    ready: impl Fn(&megaconn::ServerStats) -> bool,
) -> megaconn::ServerStats {
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let stats = server.handle.stats();
        if ready(&stats) {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One HTTP/1.1 POST /echo of `body`; returns the echoed body (sent with a
/// `content-length`, as the request had one).
async fn http1_echo<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    io.write_all(&request).await.unwrap();
    io.flush().await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(SAFETY, async {
        loop {
            let mut chunk = [0u8; 8192];
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("content-length")
                .trim()
                .parse()
                .unwrap();
            if buf.len() >= end + 4 + len {
                return buf[end + 4..end + 4 + len].to_vec();
            }
        }
    })
    .await
    .expect("echo in time")
}

#[tokio::test]
async fn idle_tls_connections_hold_no_pooled_buffers() {
    let ca = Ca::new();
    let server = start(ca.server(&["localhost"]));
    // HTTPS/1.1, one after a 4 KiB body each way: the buffers went back.
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut tls = connect(server.addr(), ca.client(&[b"http/1.1"]), "localhost").await;
        assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
        assert_eq!(http1_echo(&mut tls, &[b'x'; 4096]).await.len(), 4096);
        conns.push(tls);
    }
    // A buffer goes back when its bytes are used up, which may be a moment
    // after the client has its answer: wait for it (a buffer kept by an idle
    // connection times the wait out and fails the test).
    wait_stats(&server, "three idle connections, no buffer out", |s| {
        s.connections_idle == 3 && s.buffers_checked_out == 0
    })
    .await;
    // HTTP/2 over TLS gives its record buffers back too once it is idle
    // (h2 has buffers of its own). Waited for: the worker may be reading
    // the client's last frames when the response arrives.
    let h2 = connect(server.addr(), ca.client(&[b"h2"]), "localhost").await;
    let (client, conn) = h2::client::handshake(h2).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = Request::get("https://localhost/").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    wait_stats(&server, "four open, no buffer out", |s| {
        s.connections_open == 4 && s.buffers_checked_out == 0
    })
    .await;
    drop(client);
    drop(conns);
    server.summary().await;
}

#[tokio::test]
async fn a_key_update_from_an_idle_client_is_not_mistaken_for_eof() {
    let ca = Ca::new();
    let server = start(ca.server(&["localhost"]));
    let client = ca.client_versions(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let mut tls = connect(server.addr(), client, "localhost").await;
    assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
    wait_stats(&server, "idle", |s| s.connections_idle == 1).await;
    // A KeyUpdate (update requested) while the server waits: a readable
    // socket that carries no application data. Sent twice, so that the
    // server reads at least one of them on its own.
    for _ in 0..2 {
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        tls.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    // The connection still serves, under the new keys both ways.
    assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
    assert_eq!(
        http1_echo(&mut tls, b"after the key update").await,
        b"after the key update"
    );
    let stats = wait_stats(&server, "idle again", |s| s.connections_idle == 1).await;
    assert_eq!(stats.closed, 0, "{stats:?}");
    assert_eq!(stats.buffers_checked_out, 0, "{stats:?}");
    // A close_notify is an end, though: the server closes too.
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SAFETY, tls.read_to_end(&mut rest))
        .await
        .expect("the server closes after close_notify");
    wait_stats(&server, "closed", |s| s.connections_open == 0).await;
    server.summary().await;
}

/// Over TLS, HTTP/2 is what ALPN chooses: a client that agreed on http/1.1
/// (or on nothing) and then sends the HTTP/2 preface gets HTTP/1.1's answer
/// to `PRI * HTTP/2.0`, not HTTP/2's SETTINGS. Prior knowledge is for
/// cleartext (RFC 9113 §3.3; nginx answers 400), and an operator who leaves
/// `h2` out of `TlsConfig::alpn_protocols` turns HTTP/2 off. (Before, the
/// preface was served as h2c over TLS.)
#[tokio::test]
async fn the_http2_preface_is_refused_over_tls_unless_alpn_chose_h2() {
    let ca = Ca::new();
    let server = start(ca.server(&["localhost"]));
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let mut tls = connect(server.addr(), ca.client(alpn), "localhost").await;
        // The preface and an empty SETTINGS frame, as an h2c client sends.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        // As long as a status line, and as long as HTTP/2's first frame
        // (a SETTINGS header and at least one setting).
        let mut got = [0u8; 12];
        tokio::time::timeout(SAFETY, tls.read_exact(&mut got))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(&got, b"HTTP/1.1 505", "ALPN {alpn:?}");
    }
    server.summary().await;
}
