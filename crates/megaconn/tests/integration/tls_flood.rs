//! What bounds the server's work on TLS handshakes, against a real server:
//! the key-exchange groups it offers (X25519 and P-256 by default: a client
//! offering only P-384, four to five times dearer, is refused with a
//! `handshake_failure` alert unless `TlsConfig::kx_groups` lets it in), the
//! per-worker bound on handshakes in flight
//! (`TlsConfig::max_handshakes_in_flight`: ClientHellos queued past it wait
//! in the kernel's backlog, counted in `limit_hits`, while cleartext is
//! served; a client that sends nothing holds no place), and
//! `megaconn_tls_handshakes_total{outcome}`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use megaconn::{KxGroup, TlsConfig};
use tokio::io::AsyncWriteExt;

use crate::common;

use common::tls::{blocking_client, connect, http1_get, through_server_flight, Ca};
use common::{read_response, wait_stats, AppServer};

/// A fatal `handshake_failure` alert (40), in the clear.
const HANDSHAKE_FAILURE_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40];

/// A client trusting `ca` that offers only the key-exchange group `group`.
fn client_offering(
    ca: &Ca,
    group: &'static dyn rustls::crypto::SupportedKxGroup,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![group];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Sends `config`'s ClientHello to `addr` and returns all the server
/// answers until it closes.
async fn answer_to_hello(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let (mut tcp, mut client) = blocking_client(addr, config);
        client.write_tls(&mut tcp).unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).expect("the server closes");
        answer
    })
    .await
    .unwrap()
}

/// The count labelled `label` in one of `ServerStats`' labelled lists.
fn count_of(counts: &[(&'static str, u64)], label: &str) -> u64 {
    counts
        .iter()
        .find(|(l, _)| *l == label)
        .unwrap_or_else(|| panic!("no {label} in {counts:?}"))
        .1
}

/// `stats`' count of handshakes that ended as `outcome`.
fn handshakes(stats: &megaconn::ServerStats, outcome: &str) -> u64 {
    count_of(&stats.tls_handshakes, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p384_only_clients_are_refused_by_default_and_outcomes_are_counted() {
    use rustls::crypto::ring::kx_group::{SECP384R1, X25519};
    let ca = Ca::new();
    let tls = ca.server(&["localhost"]);
    let server =
        common::TestServer::start(megaconn::Server::builder().workers(1).tls(tls.clone())).await;

    // P-384 alone: nothing in common, the RFC 8446 4.1.1 alert.
    let answer = answer_to_hello(server.addr, client_offering(&ca, SECP384R1)).await;
    assert_eq!(answer, HANDSHAKE_FAILURE_ALERT);
    // X25519: served.
    let mut s = connect(server.addr, client_offering(&ca, X25519), "localhost").await;
    assert_eq!(http1_get(&mut s).await.1, "Hello, World!");
    drop(s);
    // A client that reads our flight and leaves: abandoned.
    let addr = server.addr;
    let config = client_offering(&ca, X25519);
    tokio::task::spawn_blocking(move || drop(through_server_flight(addr, config)))
        .await
        .unwrap();
    server
        .wait_stats("the three handshakes counted", |s| {
            handshakes(s, "failed") == 1
                && handshakes(s, "completed") == 1
                && handshakes(s, "abandoned") == 1
        })
        .await;
    let metrics = server.handle.render_metrics();
    for line in [
        "megaconn_tls_handshakes_total{outcome=\"failed\"} 1",
        "megaconn_tls_handshakes_total{outcome=\"completed\"} 1",
        "megaconn_tls_handshakes_total{outcome=\"abandoned\"} 1",
        "megaconn_tls_handshakes_total{outcome=\"timeout\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in {metrics}"
        );
    }

    // Let in by the knob (live: the next handshake takes it).
    let _ = tls.kx_groups(&[KxGroup::X25519, KxGroup::P384]).unwrap();
    let mut s = connect(server.addr, client_offering(&ca, SECP384R1), "localhost").await;
    assert_eq!(http1_get(&mut s).await.1, "Hello, World!");
    server.stop().await;
}

/// A server of one worker with a cleartext listener (first) and a TLS one
/// (second), at most `cap` handshakes in flight and no handshake timeout
/// (a place held by a silent client would stay held), whose `/block` handler
/// blocks the worker's thread until the returned sender sends (or drops),
/// after sending on the returned receiver that it started; and a clone of
/// its live TLS configuration.
fn blocking_server(
    ca: &Ca,
    cap: Option<usize>,
) -> (
    AppServer,
    std::sync::mpsc::Sender<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    TlsConfig,
) {
    let tls = ca
        .server(&["localhost"])
        .handshake_timeout(None)
        .max_handshakes_in_flight(cap);
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let (started_tx, started) = tokio::sync::mpsc::unbounded_channel();
    let app = tower::service_fn(move |req: http::Request<megaconn::Body>| {
        let (released, started_tx) = (released.clone(), started_tx.clone());
        async move {
            if req.uri().path() == "/block" {
                let _ = started_tx.send(());
                // Blocks the worker: connections queue in the backlog.
                let _ = released.lock().unwrap().recv();
            }
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"Hello, World!"));
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        }
    });
    let builder = megaconn::Server::builder()
        .workers(1)
        .tls(tls.clone())
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen_tls_on("127.0.0.1:0".parse().unwrap());
    (AppServer::start(builder, app), release, started, tls)
}

/// With `clients` ClientHellos queued while the worker is blocked, then let
/// go, each client gets the server's flight; returns the count of
/// `tls_handshakes_in_flight` hits. The server starts with a bound of
/// `cap`, changed to `then` on the running server if given.
async fn hellos_queued_behind_a_blocked_worker(
    cap: Option<usize>,
    then: Option<Option<usize>>,
    clients: usize,
) -> u64 {
    let ca = Ca::new();
    let (server, release, mut started, tls) = blocking_server(&ca, cap);
    if let Some(bound) = then {
        // The server runs: its worker's gate is made.
        let _ = tls.max_handshakes_in_flight(bound);
    }
    let [plain, secure]: [SocketAddr; 2] = server.addrs.clone().try_into().unwrap();
    let mut blocker = tokio::net::TcpStream::connect(plain).await.unwrap();
    blocker
        .write_all(b"GET /block HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    started.recv().await.expect("the worker blocks");
    let config = ca.client(&[b"http/1.1"]);
    // All connected and their ClientHellos sent while the worker cannot
    // accept: when it can, it finds them all queued at once.
    let queued: Vec<_> = tokio::task::spawn_blocking(move || {
        (0..clients)
            .map(|_| {
                let (mut tcp, mut client) = blocking_client(secure, config.clone());
                client.write_tls(&mut tcp).unwrap();
                (tcp, client)
            })
            .collect()
    })
    .await
    .unwrap();
    release.send(()).unwrap();
    assert_eq!(read_response(&mut blocker).await.status, 200);
    // Every one is answered in turn.
    tokio::task::spawn_blocking(move || {
        for (mut tcp, mut client) in queued {
            while client.is_handshaking() {
                client.read_tls(&mut tcp).unwrap();
                client.process_new_packets().unwrap();
            }
            while client.wants_write() {
                client.write_tls(&mut tcp).unwrap();
            }
            tcp.flush().unwrap();
        }
    })
    .await
    .unwrap();
    wait_stats(&server.handle, "the handshakes done", |s| {
        handshakes(s, "completed") == clients as u64
    })
    .await;
    // Cleartext is served.
    let mut s = tokio::net::TcpStream::connect(plain).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
    let hits = count_of(
        &server.handle.stats().limit_hits,
        "tls_handshakes_in_flight",
    );
    assert!(server.stop().await, "the server stops");
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_the_bound_wait_in_the_backlog_and_are_counted() {
    // Five queued, two places: the accept loop stops at the third.
    assert!(hellos_queued_behind_a_blocked_worker(Some(2), None, 5).await >= 1);
    // Within the bound: never reached.
    assert_eq!(
        hellos_queued_behind_a_blocked_worker(Some(5), None, 5).await,
        0
    );
}

/// The bound changed on the running server (what SIGHUP does in
/// `megaconn serve`) applies at once, raised, lowered, set or lifted; it
/// used to be read once, when the workers started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_changes_on_a_running_server() {
    // Raised from 2 to 5: five queued fit.
    assert_eq!(
        hellos_queued_behind_a_blocked_worker(Some(2), Some(Some(5)), 5).await,
        0
    );
    // Lifted: five queued fit.
    assert_eq!(
        hellos_queued_behind_a_blocked_worker(Some(2), Some(None), 5).await,
        0
    );
    // Lowered from 5 to 2, and set on a server started unbounded: the
    // accept loop stops at the third.
    assert!(hellos_queued_behind_a_blocked_worker(Some(5), Some(Some(2)), 5).await >= 1);
    assert!(hellos_queued_behind_a_blocked_worker(None, Some(Some(2)), 5).await >= 1);
}

/// Clients that connect and send nothing (or half a ClientHello) hold no
/// place: with a bound of one, a real client is served next to three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_hold_no_place_among_handshakes_in_flight() {
    let ca = Ca::new();
    let (server, release, _started, _) = blocking_server(&ca, Some(1));
    drop(release);
    let secure = server.addrs[1];
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(secure).await.unwrap());
    }
    let mut half = tokio::net::TcpStream::connect(secure).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    wait_stats(&server.handle, "the four accepted", |s| s.accepted == 4).await;
    // Had they kept their places, the one place would be theirs for good
    // (no handshake timeout): this handshake would never start.
    let mut s = connect(secure, ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut s).await.1, "Hello, World!");
    drop((silent, half));
    assert!(server.stop().await, "the server stops");
}

/// A certificate for `localhost` from `ca`, one connection per IP per 100 s
/// (`TlsConfig::handshake_rate_per_ip`): the second comes long before a
/// refill.
fn one_handshake_per_ip(ca: &Ca) -> TlsConfig {
    ca.server(&["localhost"]).handshake_rate_per_ip(Some(0.01))
}

/// A request from `source`'s IP to `addr` over TLS, answered; closed.
async fn served_from(source: &str, addr: SocketAddr, config: Arc<rustls::ClientConfig>) {
    let source: std::net::IpAddr = source.parse().unwrap();
    let tcp = common::connect_from((source, 0), addr).await;
    let mut s = common::tls::handshake(tcp, config, "localhost")
        .await
        .expect("handshake succeeds");
    assert_eq!(http1_get(&mut s).await.1, "Hello, World!");
}

/// One IP's connections past `TlsConfig::handshake_rate_per_ip` are closed
/// at accept, before any TLS work (no answer, no handshake counted), and
/// counted; another IP is served meanwhile; lifted on the running server,
/// the first IP is served again. (`max_connections_per_ip` would not stop
/// this client: it never holds more than one connection at a time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ips_handshakes_past_its_rate_are_closed_at_accept() {
    let ca = Ca::new();
    let tls = one_handshake_per_ip(&ca);
    let server = common::TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_connections_per_ip(Some(1))
            .tls(tls.clone()),
    )
    .await;
    let config = ca.client(&[b"http/1.1"]);
    served_from("127.0.0.1", server.addr, config.clone()).await;
    server
        .wait_stats("the first handshake done", |s| {
            handshakes(s, "completed") == 1 && s.connections_open == 0
        })
        .await;

    // The same IP again, one connection at a time: closed before any
    // answer, the ClientHello unanswered.
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            let (mut tcp, mut client) = blocking_client(addr, config);
            client.write_tls(&mut tcp).unwrap();
            let mut answer = Vec::new();
            match tcp.read_to_end(&mut answer) {
                Ok(_) => answer,
                // The ClientHello came after the close: a reset, behind
                // the FIN (the next test has it there at the accept).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => answer,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(answer.is_empty(), "no TLS answer: {answer:?}");
    let stats = server.handle.stats();
    assert_eq!(count_of(&stats.limit_hits, "tls_handshake_rate_per_ip"), 1);
    assert_eq!(
        stats.rejected_per_ip, 0,
        "not the concurrent limit's refusal"
    );

    // Another IP has a bucket of its own.
    served_from("127.0.0.2", server.addr, config.clone()).await;

    // Lifted live: the first IP is served again.
    let _ = tls.handshake_rate_per_ip(None);
    served_from("127.0.0.1", server.addr, config).await;
    server
        .wait_stats("every handshake counted", |s| {
            handshakes(s, "completed") == 3
                && handshakes(s, "failed") == 0
                && handshakes(s, "abandoned") == 0
        })
        .await;
    server.stop().await;
}

/// A connection refused by `TlsConfig::handshake_rate_per_ip` with its
/// ClientHello already in (`defer_accept` makes sure of it) is closed with
/// a FIN, not the reset that closing over unread bytes sends: the client
/// reads an end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_handshake_rate_is_a_clean_close() {
    let ca = Ca::new();
    let tls = one_handshake_per_ip(&ca);
    let server = common::TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .defer_accept(Some(std::time::Duration::from_secs(30)))
            .tls(tls),
    )
    .await;
    let config = ca.client(&[b"http/1.1"]);
    // The IP's one token.
    served_from("127.0.0.1", server.addr, config.clone()).await;
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let (mut tcp, mut client) = blocking_client(addr, config);
        client.write_tls(&mut tcp).unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer)
            .expect("an end of stream, not a reset");
        answer
    })
    .await
    .unwrap();
    assert!(answer.is_empty(), "no TLS answer: {answer:?}");
    let stats = server.handle.stats();
    assert_eq!(count_of(&stats.limit_hits, "tls_handshake_rate_per_ip"), 1);
    server.stop().await;
}

/// A refused TLS client's ClientHello, read and discarded before the close
/// (`admission::refuse`): it reads an end of stream, not a reset, and no
/// reset follows. `max_connections_per_ip` with the ClientHello in at the
/// accept (`defer_accept`): its refusal closed over the unread ClientHello
/// without a word, a reset (the handshake rate's refusal was made a FIN
/// in session 39; this one was not). The handshake rate with the
/// ClientHello sent only once the refusal counted its connection closed:
/// the FIN came before it and the ClientHello, arriving on a closed
/// socket, drew a reset; the refusal now waits for it (bounded,
/// `admission::Undecided`), then closes with a FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_clienthello_refused_at_accept_gets_a_fin_never_a_reset() {
    let ca = Ca::new();
    let config = ca.client(&[b"http/1.1"]);
    let hello_then_end = |mut tcp: std::net::TcpStream| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut client = rustls::ClientConnection::new(config, name).unwrap();
            client.write_tls(&mut tcp).unwrap();
            let mut answer = Vec::new();
            let end = tcp.read_to_end(&mut answer).map(|_| answer);
            (end, tcp.take_error().unwrap())
        })
    };

    let tls = ca.server(&["localhost"]);
    let per_ip = common::TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .defer_accept(Some(std::time::Duration::from_secs(30)))
            .max_connections_per_ip(Some(1))
            .tls(tls),
    )
    .await;
    let mut held = connect(per_ip.addr, config.clone(), "localhost").await;
    assert_eq!(http1_get(&mut held).await.1, "Hello, World!");
    let tcp = std::net::TcpStream::connect(per_ip.addr).unwrap();
    tcp.set_read_timeout(Some(common::SAFETY)).unwrap();
    let (end, error) = hello_then_end(tcp).await.unwrap();
    let answer = end.expect("per IP: an end of stream, not a reset");
    assert!(answer.is_empty(), "per IP: no TLS answer: {answer:?}");
    assert!(error.is_none(), "per IP: {error:?}");
    assert_eq!(per_ip.handle.stats().rejected_per_ip, 1);
    drop(held);
    per_ip.stop().await;

    let rate = common::TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .tls(one_handshake_per_ip(&ca)),
    )
    .await;
    served_from("127.0.0.1", rate.addr, config.clone()).await;
    let tcp = std::net::TcpStream::connect(rate.addr).unwrap();
    tcp.set_read_timeout(Some(common::SAFETY)).unwrap();
    // Refused, and counted closed after the refusal looked for its bytes.
    wait_stats(&rate.handle, "the refusal", |s| {
        count_of(&s.limit_hits, "tls_handshake_rate_per_ip") == 1 && s.closed == 2
    })
    .await;
    let (end, error) = hello_then_end(tcp).await.unwrap();
    let answer = end.expect("rate: an end of stream, not a reset");
    assert!(answer.is_empty(), "rate: no TLS answer: {answer:?}");
    assert!(error.is_none(), "rate: a reset followed the end: {error:?}");
    rate.stop().await;
}
