//! Admission limits with real sockets: over the per-IP or accept-rate limit a
//! connection is answered `503` (on a cleartext HTTP listener; on a TLS one
//! closed without a word), closed at once and counted under the limit's
//! name; under them nothing is refused.

use crate::common;

use std::net::SocketAddr;

use common::{read_response, read_to_close, TestServer};
use megaconn::AcceptRate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A refused client's answer on a cleartext HTTP listener, whole.
fn refusal(retry_after: u64) -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Sends a request on a refused connection and reads what comes back until
/// the server's close: the bytes, and how the stream ended (`Ok` for a FIN,
/// the error for a reset).
async fn refused_answer(s: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut out = Vec::new();
    let end = tokio::time::timeout(common::SAFETY, async {
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the server did not close the refused connection");
    (out, end)
}

async fn served(s: &mut TcpStream) -> bool {
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_response(s).await.status == 200
}

#[tokio::test]
async fn per_ip_limit_refuses_the_extra_connection_only() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(2)
            .max_connections_per_ip(Some(2)),
    )
    .await;
    let mut a = common::connect_from(([127, 0, 0, 1], 0), server.addr).await;
    let mut b = common::connect_from(([127, 0, 0, 1], 0), server.addr).await;
    assert!(served(&mut a).await && served(&mut b).await);
    assert_eq!(
        server.handle.stats().rejected_per_ip,
        0,
        "under the limit nothing is refused"
    );

    let mut c = common::connect_from(([127, 0, 0, 1], 0), server.addr).await;
    let (answer, _) = refused_answer(&mut c).await;
    assert_eq!(
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(&refusal(1))
    );
    server
        .wait_stats("one per-IP refusal", |s| s.rejected_per_ip == 1)
        .await;

    // Another address is counted on its own.
    let mut d = common::connect_from(([127, 0, 0, 2], 0), server.addr).await;
    assert!(served(&mut d).await);
    // A closed connection frees its place.
    drop(a);
    server
        .wait_stats("a closed", |s| s.connections_open == 2)
        .await;
    let mut e = common::connect_from(([127, 0, 0, 1], 0), server.addr).await;
    assert!(served(&mut e).await);
    assert_eq!(server.handle.stats().rejected_per_ip, 1);
    let metrics = server.handle.render_metrics();
    assert!(
        metrics.contains("megaconn_connections_rejected_total{limit=\"max_connections_per_ip\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

/// A parked connection keeps its per-IP place; when the client resets it
/// (RST), the place comes back. The lot used to read the IP back from the
/// socket at close, which fails once the peer has reset it (`ENOTCONN`), so
/// each reset leaked a place and the IP was refused for good after N of them.
#[tokio::test]
async fn a_reset_parked_connection_gives_its_per_ip_place_back() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .park_idle_after(Some(std::time::Duration::from_millis(20)))
            .max_connections_per_ip(Some(1)),
    )
    .await;
    for round in 0..3 {
        let mut a = common::connect_from(([127, 0, 0, 1], 0), server.addr).await;
        assert!(served(&mut a).await, "round {round}: under the limit");
        server
            .wait_stats("parked", |s| s.connections_parked == 1)
            .await;
        // SO_LINGER 0: closing sends RST, so the parked socket is in
        // TCP_CLOSE when the lot sees the hang-up.
        socket2::SockRef::from(&a)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(a);
        server
            .wait_stats("closed", |s| s.connections_open == 0)
            .await;
    }
    let mut b = common::connect_from(([127, 0, 0, 1], 0), server.addr).await;
    assert!(served(&mut b).await, "the IP's place was given back");
    assert_eq!(server.handle.stats().rejected_per_ip, 0);
    server.stop().await;
}

#[tokio::test]
async fn accept_rate_limit_refuses_past_the_burst() {
    // A burst of 2 and (practically) no refill: the third connection is over.
    let server = TestServer::start(megaconn::Server::builder().workers(1).accept_rate(Some(
        AcceptRate {
            per_second: 0.001,
            burst: 2,
        },
    )))
    .await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert!(served(&mut a).await && served(&mut b).await);
    let mut c = server.connect().await;
    // Retry-After: the time the bucket takes to refill one token, 1,000 s
    // at 0.001 a second, or one of the next seconds (spread).
    let (answer, _) = refused_answer(&mut c).await;
    let spread = 1000..1000 + megaconn_spread();
    assert!(
        spread.clone().any(|secs| answer == refusal(secs)),
        "{} not a refusal with Retry-After in {spread:?}",
        String::from_utf8_lossy(&answer)
    );
    server
        .wait_stats("one accept-rate refusal", |s| s.rejected_accept_rate == 1)
        .await;
    // Accepted connections are unaffected.
    assert!(served(&mut a).await);
    server.stop().await;
}

/// How many `Retry-After` values the refusals are spread over (the base and
/// the seconds after it), as `conn/accept.rs` says.
fn megaconn_spread() -> u64 {
    3
}

/// The `Retry-After` of a `503` refusal, whole.
fn retry_after(answer: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(answer);
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .unwrap_or_else(|| panic!("no Retry-After in {text}"))
        .parse()
        .unwrap()
}

/// Clients refused over the accept rate are told to come back at spread
/// times: each `Retry-After` within the refill time and the two seconds
/// after it, and not all the same. They were all told the same second (a
/// storm of 8,000 wss clients refused together came back together).
#[tokio::test]
async fn accept_rate_refusals_spread_their_retry_after() {
    const REFUSED: u64 = 30;
    let server = TestServer::start(megaconn::Server::builder().workers(1).accept_rate(Some(
        AcceptRate {
            per_second: 0.001,
            burst: 1,
        },
    )))
    .await;
    let mut a = server.connect().await;
    assert!(served(&mut a).await);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..REFUSED {
        let mut c = server.connect().await;
        let (answer, _) = refused_answer(&mut c).await;
        let secs = retry_after(&answer);
        assert!(
            (1000..1000 + megaconn_spread()).contains(&secs),
            "Retry-After {secs}"
        );
        seen.insert(secs);
    }
    assert!(seen.len() > 1, "every refusal said Retry-After {seen:?}");
    server
        .wait_stats("the refusals", |s| s.rejected_accept_rate == REFUSED)
        .await;
    server.stop().await;
}

/// With `refuse_at_max_connections`, a client over `max_connections` when
/// nothing can be closed for it (the slots held by connections busy with a
/// request) is answered `503` with a `Retry-After` of 1 to 3 s and closed,
/// counted under `limit_hits{limit="max_connections"}`; the connections held
/// are untouched. (WebSockets, which are never evicted either, are in
/// `ws.rs`.) Before, it waited in the backlog with no answer.
#[tokio::test]
async fn at_the_limit_with_nothing_to_evict_a_newcomer_can_be_refused_with_a_503() {
    let mut server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_connections(1)
            .refuse_at_max_connections(true)
            .park_idle_after(Some(std::time::Duration::from_millis(20))),
    )
    .await;
    let mut busy = server.connect().await;
    server.start_waiting(&mut busy).await;
    let mut newcomer = tokio::time::timeout(common::SAFETY, server.connect())
        .await
        .expect("connected");
    let (answer, end) = refused_answer(&mut newcomer).await;
    assert!((1..=megaconn_spread()).contains(&retry_after(&answer)));
    assert!(end.is_ok(), "the refusal ended in {end:?}");
    server
        .wait_stats("one refusal at the limit", |s| {
            limit_hits(s, "max_connections") == 1
        })
        .await;
    let metrics = server.handle.render_metrics();
    assert!(
        metrics.contains("megaconn_limit_hits_total{limit=\"max_connections\"} 1"),
        "{metrics}"
    );
    server.probe.release.notify_one();
    assert_eq!(read_response(&mut busy).await.status, 200);
    let stats = server.handle.stats();
    assert_eq!(common::closed_as(&stats, "evicted"), 0, "{stats:?}");
    server.stop().await;
}

/// Below `max_connections` no connection waits to be accepted. Each
/// acceptor used to take its slot before waiting for a connection, so an
/// idle acceptor held one: here, one worker listening on two addresses at
/// `max_connections(2)`, the second address's idle acceptor held the free
/// slot, and a second connection to the first address waited in the
/// backlog with one connection open.
#[tokio::test]
async fn an_idle_acceptor_holds_no_connection_slot() {
    let (app, _probe) = common::test_app();
    let server = common::AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_connections(2)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen_on("127.0.0.1:0".parse().unwrap()),
        app,
    );
    let (addrs, handle) = (&server.addrs, &server.handle);
    assert_eq!(addrs.len(), 2);

    let mut first = TcpStream::connect(addrs[0]).await.unwrap();
    assert!(served(&mut first).await);
    // Held open (idle): one of two slots taken.
    let mut second = TcpStream::connect(addrs[0]).await.unwrap();
    let answered = tokio::time::timeout(common::SAFETY, served(&mut second)).await;
    assert!(
        answered.is_ok_and(|ok| ok),
        "a connection below max_connections was not accepted: {:?}",
        handle.stats()
    );
    assert_eq!(handle.stats().accept_waits_at_limit, 0);
    drop((first, second));
    assert!(server.stop().await, "the server stops");
}

/// At `max_connections`, idle keep-alive connections make room for new
/// ones, longest idle first, as nginx reuses them ("worker_connections are
/// not enough, reusing connections"). The acceptor used to wait for a
/// connection to close by itself: with every slot held by a parked
/// keep-alive client, a new client waited until `idle_timeout`, or for
/// ever without one.
#[tokio::test]
async fn at_the_limit_idle_keep_alive_connections_make_room_for_new_ones() {
    const LIMIT: usize = 10;
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_connections(LIMIT)
            .park_idle_after(Some(std::time::Duration::from_millis(20))),
    )
    .await;
    // The lot knows idle deadlines to the second and, within one, walks by
    // descriptor: the first client's connection is made the longest idle
    // by a second, and its descriptor not the lowest (those freed after it
    // go to the later ones, as another test's closes in this process can),
    // so the order checked below comes from idle time alone. (It came from
    // the descriptors: the check failed when another test's close gave a
    // later connection a lower one.)
    let mut holes: Vec<std::fs::File> = (0..2 * LIMIT)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let mut idle = Vec::new();
    for i in 0..LIMIT {
        let mut s = server.connect().await;
        assert!(served(&mut s).await);
        idle.push(s);
        server
            .wait_stats("parked", |s| s.connections_parked == i as i64 + 1)
            .await;
        if i == 0 {
            holes.clear();
            // A wait for the clock, not for a signal: the others' deadlines
            // fall at least one tick later.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    let mut newcomer = server.connect().await;
    let answered = tokio::time::timeout(common::SAFETY, served(&mut newcomer)).await;
    assert!(
        answered.is_ok_and(|ok| ok),
        "a new client at the limit was not served: {:?}",
        server.handle.stats()
    );
    let stats = server.handle.stats();
    assert!(stats.accept_waits_at_limit >= 1, "{stats:?}");
    assert!(common::closed_as(&stats, "evicted") >= 1, "{stats:?}");
    // Longest idle first: the first client's connection went.
    assert!(read_to_close(&mut idle[0]).await.is_empty());
    let metrics = server.handle.render_metrics();
    assert!(
        metrics.contains(r#"megaconn_connections_closed_total{reason="evicted"}"#),
        "{metrics}"
    );
    server.stop().await;
}

/// A connection with a request under way is never closed to make room: at
/// `max_connections(1)` with its one connection waiting on its handler, a
/// new client waits; once the answer is out and the connection idles
/// (parked), it makes room, and the new client is served.
#[tokio::test]
async fn at_the_limit_a_connection_mid_request_is_never_evicted() {
    let mut server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_connections(1)
            .park_idle_after(Some(std::time::Duration::from_millis(20))),
    )
    .await;
    let mut busy = server.connect().await;
    server.start_waiting(&mut busy).await;
    let newcomer = tokio::spawn({
        let addr = server.addr;
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            served(&mut s).await
        }
    });
    server
        .wait_stats("the acceptor at the limit", |s| {
            s.accept_waits_at_limit >= 1
        })
        .await;
    // An observation window, not a synchronisation: the acceptor looks for
    // an idle connection to close every 100 ms while it waits.
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    let stats = server.handle.stats();
    assert_eq!(common::closed_as(&stats, "evicted"), 0, "{stats:?}");
    assert!(!newcomer.is_finished(), "served past the limit: {stats:?}");
    server.probe.release.notify_one();
    let answer = read_response(&mut busy).await;
    assert_eq!(answer.status, 200, "the request under way was answered");
    let served_newcomer = tokio::time::timeout(common::SAFETY, newcomer).await;
    assert!(
        matches!(served_newcomer, Ok(Ok(true))),
        "{:?}",
        server.handle.stats()
    );
    assert_eq!(common::closed_as(&server.handle.stats(), "evicted"), 1);
    assert!(
        read_to_close(&mut busy).await.is_empty(),
        "evicted once idle"
    );
    server.stop().await;
}

/// Connections to a server of `workers` workers at a (practically) zero
/// accept rate and `burst`: how many were admitted at once. Forty
/// connections reach every one of two workers (the kernel spreads them by
/// a hash of their addresses; one getting fewer than 2 of 40 has a chance
/// of ~1 in 10^10), so each worker uses its whole share.
async fn admitted_of_a_burst(workers: usize, burst: u32) -> u64 {
    const CONNECTIONS: u64 = 40;
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(workers)
            .accept_rate(Some(AcceptRate {
                per_second: 0.001,
                burst,
            })),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        held.push(server.connect().await);
    }
    server
        .wait_stats("every connection accepted", |s| s.accepted == CONNECTIONS)
        .await;
    let admitted = CONNECTIONS - server.handle.stats().rejected_accept_rate;
    drop(held);
    server.stop().await;
    admitted
}

/// The burst is split over the workers exactly: a burst of 3 on 2 workers
/// admits 3 at once (2 on one worker, 1 on the other), not 2 (each
/// worker's share was the quotient rounded down, 1).
#[tokio::test]
async fn the_accept_burst_is_split_over_the_workers_exactly() {
    assert_eq!(admitted_of_a_burst(2, 3).await, 3);
}

/// A burst below the worker count is exact: a burst of 1 on 2 workers
/// admits 1 at once. Each worker's share used to be at least 1, so it
/// admitted 2.
#[tokio::test]
async fn a_burst_below_the_worker_count_is_exact() {
    assert_eq!(admitted_of_a_burst(2, 1).await, 1);
}

/// A refused client reads the `503` and then the server's FIN, not an RST.
/// With `TCP_DEFER_ACCEPT` the request is in the socket's receive queue
/// when it is accepted, and closing a socket with unread bytes sends an
/// RST (Linux `tcp_close`), which a client may take for a reset before it
/// reads the answer (a Windows one drops what it received). The refusal
/// used to close at once: an RST every time in this setting.
#[tokio::test]
async fn a_refused_client_reads_the_503_and_then_a_clean_close() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .defer_accept(Some(std::time::Duration::from_secs(5)))
            .max_connections_per_ip(Some(1)),
    )
    .await;
    let mut first = server.connect().await;
    assert!(served(&mut first).await);
    for round in 0..20 {
        let mut refused = server.connect().await;
        let (answer, end) = refused_answer(&mut refused).await;
        assert_eq!(
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(&refusal(1)),
            "round {round}"
        );
        assert!(end.is_ok(), "round {round}: the refusal ended in {end:?}");
    }
    server
        .wait_stats("twenty refusals", |s| s.rejected_per_ip == 20)
        .await;
    server.stop().await;
}

/// A worker listening on two addresses takes from one bucket: a burst of 2
/// admits 2 over both. Each listener's accept loop used to have a bucket of
/// the worker's share, so two addresses admitted twice the burst (and the
/// rate).
#[tokio::test]
async fn a_workers_listeners_share_its_accept_rate() {
    let (app, _probe) = common::test_app();
    let server = common::AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .accept_rate(Some(AcceptRate {
                per_second: 0.001,
                burst: 2,
            }))
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen_on("127.0.0.1:0".parse().unwrap()),
        app,
    );
    let (addrs, handle) = (&server.addrs, &server.handle);
    let mut statuses = Vec::new();
    for addr in [addrs[0], addrs[1], addrs[0], addrs[1]] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        statuses.push(read_response(&mut s).await.status);
    }
    assert_eq!(statuses, [200, 200, 503, 503], "{:?}", handle.stats());
    assert!(server.stop().await, "the server stops");
}

/// What an HTTP/2 client with prior knowledge (the `h2` crate's) makes of
/// a refusal at accept: how its connection ended, and its request's error.
async fn h2c_refused(addr: SocketAddr) -> (h2::Error, h2::Error) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    // The GOAWAY may be read before the request goes out or after: either
    // way its error is the connection's.
    let request = http::Request::get("http://t/").body(()).unwrap();
    let failed = match client.ready().await {
        Ok(mut ready) => match ready.send_request(request, true) {
            Ok((response, _)) => tokio::time::timeout(common::SAFETY, response)
                .await
                .expect("the refused request ends")
                .expect_err("a refused request has no response"),
            Err(e) => e,
        },
        Err(e) => e,
    };
    let ended = tokio::time::timeout(common::SAFETY, conn)
        .await
        .expect("the refused connection ends")
        .unwrap()
        .expect_err("the connection ends with the server's GOAWAY");
    (ended, failed)
}

/// Asserts that `e` is the server's `GOAWAY(ENHANCE_YOUR_CALM)`.
fn assert_calm_goaway(e: &h2::Error, what: &str) {
    assert!(
        e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{what}: {e:?}"
    );
}

/// An HTTP/2 client with prior knowledge refused at accept (per IP, then
/// accept rate) is told so in HTTP/2: the server's SETTINGS, then
/// `GOAWAY(ENHANCE_YOUR_CALM)` with last-stream-id 0 (nothing processed:
/// safe to retry), which the `h2` client reports as the server's GOAWAY
/// for its connection and its request. With `TCP_DEFER_ACCEPT` its
/// preface is there when the connection is accepted (without it, the
/// refusal waits up to a second for its first bytes: see
/// `h2_limits::an_h2c_client_whose_preface_comes_after_its_refusal_reads_a_goaway`). It was sent HTTP/1.1's `503`,
/// which is no HTTP/2 frame: the client's connection ended in an I/O
/// error (a broken pipe), its request with it, and nothing told it that
/// the request was safe to retry.
#[tokio::test]
async fn an_http2_client_refused_at_accept_reads_a_goaway() {
    let deferred = || {
        megaconn::Server::builder()
            .workers(1)
            .defer_accept(Some(std::time::Duration::from_secs(5)))
    };
    let per_ip = deferred().max_connections_per_ip(Some(1));
    let rate = deferred().accept_rate(Some(AcceptRate {
        per_second: 0.001,
        burst: 1,
    }));
    for (what, builder) in [("per IP", per_ip), ("accept rate", rate)] {
        let server = TestServer::start(builder).await;
        let mut first = server.connect().await;
        assert!(served(&mut first).await);
        let (ended, failed) = h2c_refused(server.addr).await;
        assert_calm_goaway(&ended, &format!("{what}: the connection"));
        assert_calm_goaway(&failed, &format!("{what}: the request"));
        server
            .wait_stats("one refusal", |s| {
                s.rejected_per_ip + s.rejected_accept_rate == 1
            })
            .await;
        // An HTTP/1.1 client on the same listener still reads the 503.
        let mut refused = server.connect().await;
        let (answer, _) = refused_answer(&mut refused).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"),
            "{what}: {}",
            String::from_utf8_lossy(&answer)
        );
        server.stop().await;
    }
}

/// A label's count in `limit_hits`.
fn limit_hits(stats: &megaconn::ServerStats, label: &str) -> u64 {
    stats
        .limit_hits
        .iter()
        .find(|(l, _)| *l == label)
        .unwrap_or_else(|| panic!("no limit_hits label {label}"))
        .1
}

/// The process's hard open-file limit, which the server raises its soft
/// one to.
fn open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    usize::try_from(lim.rlim_max.max(lim.rlim_cur)).unwrap_or(usize::MAX)
}

/// A refusal whose answer waits for its client's first bytes (here the
/// 503 or h2c's GOAWAY) takes a descriptor outside any connection slot,
/// so the server keeps only as many waiting as the open-file limit has
/// room for past `max_connections` and `fd_reserve`. With
/// `max_connections` at the limit there is none: a silent client over the
/// per-IP limit is answered at once, counted under `refusals_waiting` as
/// well as `per_ip`, and logged. The bound was half the room the
/// *default* `max_connections` leaves, 112 whatever `max_connections`
/// was, and nothing counted or logged reaching it.
#[tokio::test]
async fn with_no_room_for_waiting_refusals_one_is_answered_at_once_and_counted() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_connections(open_file_limit())
            .max_connections_per_ip(Some(1)),
    )
    .await;
    let mut first = server.connect().await;
    assert!(served(&mut first).await);
    // Silent: its first bytes would choose between the 503 and a GOAWAY.
    let mut refused = server.connect().await;
    server
        .wait_stats("a refusal answered at once", |s| {
            s.rejected_per_ip == 1 && limit_hits(s, "refusals_waiting") == 1
        })
        .await;
    let answer = read_to_close(&mut refused).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let metrics = server.handle.render_metrics();
    assert!(
        metrics.contains("megaconn_limit_hits_total{limit=\"refusals_waiting\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}
