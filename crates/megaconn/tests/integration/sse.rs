//! Native Server-Sent Events (`SseRoute`) on real sockets: a raw TCP client
//! that reads the chunks itself, and reqwest's streaming client. Events
//! from `Hub::send`, `publish` and `broadcast` reach a parked stream
//! without waking it (its lot's counters say so), a message's lines each
//! become a `data:` line, `Hub::close` ends the stream with the last
//! chunk, the client's end or its bytes close it (and `on_close` hears
//! why), shutdown ends parked and awake streams with the route's goodbye,
//! the heartbeat comment goes from the lot's timer, HTTP/1.0 gets a
//! close-delimited body, other methods 405, and HTTPS/1.1 parks with its
//! session.

use crate::common::{self, msg::deref_to_running};

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::msg::Running;
use common::SAFETY;
use futures_util::StreamExt;
use http::request::Parts;
use megaconn::{
    Builder, CloseReason, ConnectionId, ProtocolDetail, Server, Session, ShutdownSummary, SseEvent,
    SseHandler, SseRoute,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Reports each stream's opening (its id, and its `Last-Event-ID` on
/// `lasts`) and close; greets a stream whose client sent a
/// `Last-Event-ID`, subscribes each to `news`.
struct Feed {
    opens: mpsc::UnboundedSender<ConnectionId>,
    lasts: mpsc::UnboundedSender<Option<String>>,
    closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
}

impl SseHandler for Feed {
    fn on_open(&self, request: &Parts, session: &Session) {
        let last = request
            .headers
            .get("last-event-id")
            .map(|v| v.to_str().unwrap().to_owned());
        if let Some(last) = &last {
            session.send(format!("resuming after {last}"));
        }
        session.subscribe("news").unwrap();
        let _ = self.lasts.send(last);
        let _ = self.opens.send(session.id());
    }

    fn on_close(&self, id: ConnectionId, reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// A server on 127.0.0.1:0, one worker, [`Feed`] at `/events`, running:
/// its address, and the `Last-Event-ID`s its streams opened with.
struct SseServer {
    addr: SocketAddr,
    lasts: mpsc::UnboundedReceiver<Option<String>>,
    running: Running<(ConnectionId, CloseReason)>,
}

deref_to_running!(SseServer, (ConnectionId, CloseReason));

/// Parks after 50 ms idle; no heartbeat unless the route says.
fn parking() -> Builder {
    Server::builder().park_idle_after(Some(Duration::from_millis(50)))
}

/// [`parking`], or (`false`) never parking: streams stay awake.
fn parking_if(park: bool) -> Builder {
    match park {
        true => parking(),
        false => Server::builder().park_idle_after(None),
    }
}

impl SseServer {
    async fn start(builder: Builder, shape: impl FnOnce(SseRoute<Feed>) -> SseRoute<Feed>) -> Self {
        let server = builder
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen()
            .expect("server binds");
        let addr = server.local_addr();
        let (last, lasts) = mpsc::unbounded_channel();
        let running = Running::serve(server, |server, opens, closes| {
            let feed = Feed {
                opens,
                lasts: last,
                closes,
            };
            let route = shape(SseRoute::new(feed).ping_interval(None));
            let app = axum::Router::new().route_service("/events", route);
            server.start(app).expect("server starts")
        });
        SseServer {
            addr,
            lasts,
            running,
        }
    }

    /// A raw client's stream at `/events`, its head read and checked
    /// (`version`: the request's), and the stream's id.
    async fn open(&mut self, version: &str, headers: &str) -> (Stream, ConnectionId) {
        let mut tcp = TcpStream::connect(self.addr).await.unwrap();
        let request = format!("GET /events {version}\r\nHost: x\r\n{headers}\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut stream = Stream {
            io: BufReader::new(tcp),
            head: String::new(),
        };
        stream.read_head().await;
        let (id, _) = self.next_open().await;
        (stream, id)
    }

    /// The next stream's id and the `Last-Event-ID` it opened with.
    async fn next_open(&mut self) -> (ConnectionId, Option<String>) {
        let id = self.running.next_open().await;
        (id, common::next(&mut self.lasts, "its Last-Event-ID").await)
    }

    fn wakes(&self) -> u64 {
        let s = self.handle.stats();
        s.wakes_cold + s.wakes_hot
    }

    async fn stop(self) -> ShutdownSummary {
        self.running.stop().await
    }
}

/// A raw client's event stream.
struct Stream<R = TcpStream> {
    io: BufReader<R>,
    head: String,
}

impl<R: AsyncRead + Unpin> Stream<R> {
    /// Reads the response head (up to the blank line), checked: `200`, an
    /// event stream, not cached.
    async fn read_head(&mut self) {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(SAFETY, self.io.read_line(&mut line))
                .await
                .expect("a head in time")
                .unwrap();
            assert!(n > 0, "closed before the head's end: {:?}", self.head);
            self.head.push_str(&line.to_ascii_lowercase());
            if line == "\r\n" {
                break;
            }
        }
        assert!(
            self.head.starts_with("http/1.1 200 ok\r\n"),
            "{}",
            self.head
        );
        assert!(self.head.contains("content-type: text/event-stream\r\n"));
        assert!(self.head.contains("cache-control: no-cache\r\n"));
        assert!(self.head.contains("connection: close\r\n"), "{}", self.head);
        assert!(!self.head.contains("content-length"), "{}", self.head);
    }

    fn chunked(&self) -> bool {
        self.head.contains("transfer-encoding: chunked\r\n")
    }

    /// The next chunk's bytes (empty: the last chunk).
    async fn chunk(&mut self) -> Vec<u8> {
        let mut size = String::new();
        tokio::time::timeout(SAFETY, self.io.read_line(&mut size))
            .await
            .expect("a chunk in time")
            .unwrap();
        let len = usize::from_str_radix(size.trim_end(), 16)
            .unwrap_or_else(|_| panic!("a chunk size line: {size:?}"));
        let mut data = vec![0; len + 2];
        self.io.read_exact(&mut data).await.unwrap();
        assert_eq!(&data[len..], b"\r\n", "a chunk's end");
        data.truncate(len);
        data
    }

    /// The next chunk as text.
    async fn event(&mut self) -> String {
        String::from_utf8(self.chunk().await).unwrap()
    }

    /// What is left until the server's close.
    async fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(SAFETY, self.io.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("a clean close");
        rest
    }
}

/// `Hub::send`, `publish` and `broadcast` reach a parked stream as events,
/// written to its socket by the hub's worker without waking it: it stays
/// parked and the lot counts no wake-up. A message's lines (LF, CRLF,
/// CR) are each a `data:` line. (With parking off the stream never parks:
/// this test fails at its first wait.)
#[tokio::test]
async fn events_reach_a_parked_stream_without_waking_it() {
    let mut server = SseServer::start(parking(), |r| r).await;
    let (mut stream, id) = server.open("HTTP/1.1", "Last-Event-ID: 41\r\n").await;
    assert!(stream.chunked());
    assert_eq!(stream.event().await, "data: resuming after 41\n\n");
    server.wait_parked(1).await;
    let wakes = server.wakes();
    server.hub.send(id, "one\ntwo\r\nthree\rfour").unwrap();
    server.hub.publish("news", "published").unwrap();
    server.hub.broadcast("to all").unwrap();
    let binary = SseEvent::data("with fields").event("tick").id("42");
    server.hub.send_binary(id, binary).unwrap();
    assert_eq!(
        stream.event().await,
        "data: one\ndata: two\ndata: three\ndata: four\n\n"
    );
    assert_eq!(stream.event().await, "data: published\n\n");
    assert_eq!(stream.event().await, "data: to all\n\n");
    assert_eq!(
        stream.event().await,
        "data: with fields\nevent: tick\nid: 42\n\n"
    );
    common::wait_stats(&server.handle, "pushes", |s| s.messages.pushes == 4).await;
    assert_eq!(server.handle.stats().connections_parked, 1);
    assert_eq!(server.wakes(), wakes, "a push woke the parked stream");
    // A binary push that is not one whole event does not go on the stream.
    server
        .hub
        .send_binary(id, Bytes::from_static(b"raw"))
        .unwrap();
    server.hub.send(id, "after").unwrap();
    assert_eq!(stream.event().await, "data: after\n\n");
    server.stop().await;
}

/// `Hub::close` ends a parked stream, and an awake one, after what was
/// pushed before, with the last chunk; `on_close` hears `Kicked`.
#[tokio::test]
async fn hub_close_ends_the_stream_with_the_last_chunk() {
    for park in [true, false] {
        let builder = parking_if(park);
        let mut server = SseServer::start(builder, |r| r).await;
        let (mut stream, id) = server.open("HTTP/1.1", "").await;
        if park {
            server.wait_parked(1).await;
        }
        server.hub.send(id, "last words").unwrap();
        server.hub.close(id).unwrap();
        assert_eq!(stream.event().await, "data: last words\n\n", "park {park}");
        assert_eq!(stream.chunk().await, b"", "the last chunk (park {park})");
        assert_eq!(stream.rest().await, b"", "then the close (park {park})");
        assert_eq!(server.next_close().await, (id, CloseReason::Kicked));
        common::wait_stats(&server.handle, "kicked", |s| {
            common::closed_as(s, "kicked") == 1
        })
        .await;
        server.stop().await;
    }
}

/// A client that hangs up closes its stream, parked or awake: `on_close`
/// hears `ClientClosed`, and the hub's sends to it are refused from then.
#[tokio::test]
async fn a_client_that_hangs_up_closes_its_stream() {
    for park in [true, false] {
        let builder = parking_if(park);
        let mut server = SseServer::start(builder, |r| r).await;
        let (stream, id) = server.open("HTTP/1.1", "").await;
        if park {
            server.wait_parked(1).await;
        }
        drop(stream);
        assert_eq!(server.next_close().await, (id, CloseReason::ClientClosed));
        assert_eq!(
            server.hub.send(id, "too late"),
            Err(megaconn::HubError::Closed)
        );
        server.wait_parked(0).await;
        server.stop().await;
    }
}

/// Bytes from the client close its stream as a protocol error, parked or
/// awake, counted; so do bytes sent behind the request (a pipelined
/// request), before the stream opens.
#[tokio::test]
async fn bytes_from_the_client_close_the_stream() {
    for park in [true, false] {
        let builder = parking_if(park);
        let mut server = SseServer::start(builder, |r| r).await;
        let (mut stream, id) = server.open("HTTP/1.1", "").await;
        if park {
            server.wait_parked(1).await;
        }
        stream.io.get_mut().write_all(b"hello?\n").await.unwrap();
        let reason = CloseReason::Protocol(ProtocolDetail::Sse);
        assert_eq!(server.next_close().await, (id, reason), "park {park}");
        assert_eq!(server.handle.stats().protocol_errors, 1);
        server.stop().await;
    }
    let mut server = SseServer::start(parking(), |r| r).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let two = "GET /events HTTP/1.1\r\nHost: x\r\n\r\nGET /events HTTP/1.1\r\nHost: x\r\n\r\n";
    tcp.write_all(two.as_bytes()).await.unwrap();
    let mut stream = Stream {
        io: BufReader::new(tcp),
        head: String::new(),
    };
    stream.read_head().await;
    assert_eq!(stream.rest().await, b"", "closed after the head");
    common::wait_stats(&server.handle, "protocol error", |s| s.protocol_errors == 1).await;
    assert!(server.opens.try_recv().is_err(), "no stream opened");
    server.stop().await;
}

/// Graceful shutdown ends parked and awake streams: the route's goodbye
/// event, then the last chunk, then the close; `on_close` hears
/// `Shutdown`.
#[tokio::test]
async fn shutdown_ends_streams_with_the_goodbye_and_the_last_chunk() {
    for park in [true, false] {
        let builder = parking_if(park);
        let goodbye = || SseEvent::data("restarting").event("bye").retry(5000);
        let mut server = SseServer::start(builder, |r| r.goodbye(goodbye())).await;
        let (mut stream, id) = server.open("HTTP/1.1", "").await;
        if park {
            server.wait_parked(1).await;
        }
        server.handle.shutdown();
        let event = stream.chunk().await;
        assert_eq!(Bytes::from(event), goodbye().into_bytes(), "park {park}");
        assert_eq!(stream.chunk().await, b"", "the last chunk (park {park})");
        assert_eq!(stream.rest().await, b"");
        assert_eq!(server.next_close().await, (id, CloseReason::Shutdown));
        server.stop().await;
    }
}

/// The heartbeat comment goes every ping interval from the lot's timer:
/// the stream wakes, writes it, and parks again at once.
#[tokio::test]
async fn a_parked_stream_gets_its_heartbeat_comment() {
    let every = Some(Duration::from_millis(100));
    let mut server = SseServer::start(parking(), |r| r.ping_interval(every)).await;
    let (mut stream, _id) = server.open("HTTP/1.1", "").await;
    server.wait_parked(1).await;
    for _ in 0..2 {
        assert_eq!(stream.event().await, ":\n\n");
    }
    common::wait_stats(&server.handle, "heartbeats", |s| {
        s.messages.heartbeats_sent >= 2
    })
    .await;
    server.wait_parked(1).await;
    assert!(server.handle.stats().parks >= 3, "parked again after each");
    server.stop().await;
}

/// An HTTP/1.0 client gets the events bare, the body delimited by the
/// close: `Hub::close` ends it with the close alone.
#[tokio::test]
async fn http_1_0_gets_a_close_delimited_stream() {
    let mut server = SseServer::start(parking(), |r| r).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /events HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut stream = Stream {
        io: BufReader::new(tcp),
        head: String::new(),
    };
    stream.read_head().await;
    assert!(!stream.chunked(), "{}", stream.head);
    let (id, _) = server.next_open().await;
    server.wait_parked(1).await;
    server.hub.send(id, "a\nb").unwrap();
    server.hub.close(id).unwrap();
    assert_eq!(stream.rest().await, b"data: a\ndata: b\n\n");
    assert_eq!(server.next_close().await, (id, CloseReason::Kicked));
    server.stop().await;
}

/// Methods but GET and HEAD get 405 naming them; HEAD gets the head alone
/// (and the connection serves the next request).
#[tokio::test]
async fn other_methods_are_refused_and_head_gets_the_head() {
    let mut server = SseServer::start(parking(), |r| r).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let refused = common::read_response(&mut tcp).await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));
    tcp.write_all(b"HEAD /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(SAFETY, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "the head alone: {head}");
    assert!(server.opens.try_recv().is_err(), "no stream opened");
    server.stop().await;
}

/// A GET with a body is refused 400 (the body read away by the engine),
/// not taken for the client's bytes after a `200`; the connection then
/// opens a stream for a GET without one.
#[tokio::test]
async fn a_get_with_a_body_is_refused_400() {
    let mut server = SseServer::start(parking(), |r| r).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    for request in [
        &b"GET /events HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"GET /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ] {
        tcp.write_all(request).await.unwrap();
        let refused = common::read_response(&mut tcp).await;
        assert_eq!(refused.status, 400);
    }
    assert!(server.opens.try_recv().is_err(), "no stream opened");
    tcp.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(SAFETY, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(server.handle.stats().protocol_errors, 0);
    server.stop().await;
}

/// reqwest's streaming client reads the stream (its own chunked decoding)
/// while the hub publishes to it parked.
#[tokio::test]
async fn reqwest_reads_the_events() {
    let mut server = SseServer::start(parking(), |r| r).await;
    let url = format!("http://{}/events", server.addr);
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (_id, last) = server.next_open().await;
    assert_eq!(last, None);
    server.wait_parked(1).await;
    for i in 0..3 {
        server
            .hub
            .publish("news", format!("item {i}\nmore"))
            .unwrap();
    }
    let mut body = response.bytes_stream();
    let mut got = Vec::new();
    let want = "data: item 0\ndata: more\n\n".len() * 3;
    while got.len() < want {
        let bytes = tokio::time::timeout(SAFETY, body.next())
            .await
            .expect("events in time")
            .expect("the stream goes on")
            .unwrap();
        got.extend_from_slice(&bytes);
    }
    let text = String::from_utf8(got).unwrap();
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(
        events,
        [
            "data: item 0\ndata: more",
            "data: item 1\ndata: more",
            "data: item 2\ndata: more"
        ]
    );
    server.stop().await;
}

/// Over HTTPS/1.1 a stream parks with its TLS session: pushes are sealed
/// with it and written without a wake; `Hub::close` ends the stream with
/// the last chunk, then `close_notify`.
#[tokio::test]
async fn over_tls_a_parked_stream_gets_sealed_events_and_its_last_chunk() {
    use common::tls::{connect, Ca};
    let ca = Ca::new();
    let tls = ca.server(&["localhost"]);
    let mut server = SseServer::start(parking().tls(tls), |r| r).await;
    let mut tls = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    tls.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut stream = Stream {
        io: BufReader::new(tls),
        head: String::new(),
    };
    stream.read_head().await;
    let (id, _) = server.next_open().await;
    server.wait_parked(1).await;
    let wakes = server.wakes();
    server.hub.send(id, "sealed\nevent").unwrap();
    assert_eq!(stream.event().await, "data: sealed\ndata: event\n\n");
    common::wait_stats(&server.handle, "pushes", |s| s.messages.pushes == 1).await;
    assert_eq!(server.handle.stats().connections_parked, 1);
    assert_eq!(server.wakes(), wakes, "the push woke the parked stream");
    server.hub.close(id).unwrap();
    assert_eq!(stream.chunk().await, b"", "the last chunk");
    assert_eq!(stream.rest().await, b"", "then close_notify");
    assert_eq!(server.next_close().await, (id, CloseReason::Kicked));
    server.stop().await;
}

/// Over HTTP/2 a stream cannot be handed over: the route answers with its
/// fallback service, else 505.
#[tokio::test]
async fn over_http2_the_fallback_answers_else_505() {
    let fallback = tower::service_fn(|_: http::Request<megaconn::Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(megaconn::Body::from_bytes(
            "from the fallback",
        )))
    });
    for with_fallback in [false, true] {
        let builder = parking().http2_prior_knowledge(true);
        let server = SseServer::start(builder, |r| match with_fallback {
            true => r.fallback(fallback),
            false => r,
        })
        .await;
        let mut client = common::h2c(server.addr).await;
        let request = http::Request::get(format!("http://{}/events", server.addr))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(SAFETY, response)
            .await
            .unwrap()
            .unwrap();
        if with_fallback {
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let data = body.data().await.unwrap().unwrap();
            assert_eq!(&data[..], b"from the fallback");
        } else {
            assert_eq!(response.status(), 505);
        }
        server.stop().await;
    }
}
