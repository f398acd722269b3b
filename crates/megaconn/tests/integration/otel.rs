//! OpenTelemetry tracing end to end (`--features otel`): a megaconn server
//! traces requests and exports the spans to a real OTLP receiver started
//! here, over gRPC (the collector's own `TraceService` from
//! `opentelemetry-proto`, served by tonic's generated server) and over
//! HTTP/protobuf (the same messages, decoded by hand).
//!
//! The receiver hands every span it gets to the test through a channel; the
//! test waits on that channel (with a generous bound), never on a clock.
//! Covered: the semantic-convention attributes, the route from axum's
//! `MatchedPath`, the parent from a `traceparent` (and its `tracestate`), a
//! handler's own span joining the trace, every error class (client error,
//! server error, panic, client gone, timeout) over HTTP/1.1 and HTTP/2,
//! parent-based sampling, and a dead collector that must not slow requests.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{MatchedPath, Path, State};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use common::h2c;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use megaconn::otel::opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use megaconn::otel::{opentelemetry, OtlpConfig, Protocol, Tracing};
use megaconn::{Body, Builder, ServerHandle, ShutdownSummary};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Upper bound for any single wait: reached only when a test fails.
const SAFETY: Duration = Duration::from_secs(30);

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

// ---------------------------------------------------------------- receiver

/// An OTLP receiver on 127.0.0.1:0: every span it is sent comes out of
/// `spans`.
struct Receiver {
    endpoint: String,
    spans: mpsc::UnboundedReceiver<Span>,
    handle: ServerHandle,
}

fn flatten(request: ExportTraceServiceRequest, tx: &mpsc::UnboundedSender<Span>) {
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                let _ = tx.send(span);
            }
        }
    }
}

/// The collector's gRPC service.
struct Grpc(mpsc::UnboundedSender<Span>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        flatten(request.into_inner(), &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn receiver(protocol: Protocol) -> Receiver {
    let (tx, spans) = mpsc::unbounded_channel();
    let server = Builder::default()
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("the receiver binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let endpoint = match protocol {
        Protocol::Grpc => {
            tokio::spawn(server.serve(TraceServiceServer::new(Grpc(tx))));
            format!("http://{addr}")
        }
        _ => {
            let service = tower::service_fn(move |req: Request<Body>| {
                let tx = tx.clone();
                async move {
                    assert_eq!(req.uri().path(), "/v1/traces");
                    assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                    let body = req.into_body().collect().await.expect("body").to_bytes();
                    let request = ExportTraceServiceRequest::decode(body).expect("protobuf");
                    flatten(request, &tx);
                    let answer = ExportTraceServiceResponse::default().encode_to_vec();
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/x-protobuf")
                            .body(Full::new(Bytes::from(answer)))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(server.serve(service));
            format!("http://{addr}/v1/traces")
        }
    };
    Receiver {
        endpoint,
        spans,
        handle,
    }
}

impl Receiver {
    async fn next(&mut self) -> Span {
        tokio::time::timeout(SAFETY, self.spans.recv())
            .await
            .expect("timed out waiting for a span at the receiver")
            .expect("receiver gone")
    }

    /// The next spans until one has `url.path` = `path`; the others (the
    /// handler's own spans) are returned beside it.
    async fn request_span(&mut self, path: &str) -> (Span, Vec<Span>) {
        let mut others = Vec::new();
        loop {
            let span = self.next().await;
            if text(&span, "url.path").as_deref() == Some(path) {
                return (span, others);
            }
            others.push(span);
        }
    }
}

// ---------------------------------------------------------------- span reading

fn value<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> Option<String> {
    match value(span, key) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match value(span, key) {
        Some(Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the attributes every request span has, and its error class.
#[track_caller]
fn assert_request(span: &Span, status: i64, version: &str, class: Option<&str>) {
    assert_eq!(span.kind, SpanKind::Server as i32, "{span:?}");
    assert_eq!(text(span, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(text(span, "url.scheme").as_deref(), Some("http"));
    assert_eq!(
        text(span, "network.protocol.version").as_deref(),
        Some(version)
    );
    assert_eq!(int(span, "http.response.status_code"), Some(status));
    assert_eq!(
        text(span, "megaconn.error.class").as_deref(),
        class,
        "{span:?}"
    );
    let error_type = text(span, "error.type");
    let is_error = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == SpanStatus::Error as i32);
    match class {
        None | Some("client_error") => {
            assert_eq!(error_type, None, "{span:?}");
            assert!(!is_error, "{span:?}");
        }
        Some("server_error") => {
            assert_eq!(error_type, Some(status.to_string()));
            assert!(is_error);
        }
        Some(other) => {
            assert_eq!(error_type.as_deref(), Some(other));
            assert!(is_error);
        }
    }
}

// ---------------------------------------------------------------- traced app

#[derive(Clone)]
struct AppState {
    tracing: Tracing,
    /// `/slow` says it started, so a test knows when to leave.
    started: mpsc::UnboundedSender<()>,
}

/// `/users/{id}` makes a span of its own under the request's; `/fail` is a
/// 500, `/panic` panics, `/slow` never answers, `/body` reads the body;
/// anything else is a 404. The route layer copies axum's `MatchedPath` to
/// the response, where megaconn reads it for `http.route`.
fn app(state: AppState) -> Router {
    async fn user(
        State(state): State<AppState>,
        Path(id): Path<u32>,
        req: Request<axum::body::Body>,
    ) -> String {
        let cx = req
            .extensions()
            .get::<opentelemetry::Context>()
            .cloned()
            // None for an unsampled request without a parent.
            .unwrap_or_default();
        let tracer = state.tracing.provider().tracer("app");
        let mut span = tracer.start_with_context("load user", &cx);
        span.end();
        format!("user {id}")
    }
    Router::new()
        .route("/users/{id}", get(user))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route(
            "/panic",
            get(|| async {
                panic!("boom");
                #[allow(unreachable_code)]
                ""
            }),
        )
        .route(
            "/slow",
            get(|State(state): State<AppState>| async move {
                let _ = state.started.send(());
                std::future::pending::<()>().await;
                ""
            }),
        )
        .route("/body", post(|body: Bytes| async move { body }))
        .route_layer(axum::middleware::from_fn(
            |req: axum::extract::Request, next: axum::middleware::Next| async move {
                let route = req.extensions().get::<MatchedPath>().cloned();
                let mut response = next.run(req).await;
                if let Some(route) = route {
                    response.extensions_mut().insert(route);
                }
                response
            },
        ))
        .with_state(state)
}

struct Traced {
    addr: SocketAddr,
    handle: ServerHandle,
    tracing: Tracing,
    started: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<Result<ShutdownSummary, megaconn::Error>>,
}

async fn traced(config: OtlpConfig, builder: Builder) -> Traced {
    let tracing = Tracing::otlp(config.batch_delay(Duration::from_millis(5))).expect("tracing");
    let server = builder
        .workers(1)
        .tracing(tracing.clone())
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("binds");
    let (started_tx, started) = mpsc::unbounded_channel();
    let router = app(AppState {
        tracing: tracing.clone(),
        started: started_tx,
    });
    Traced {
        addr: server.local_addr(),
        handle: server.handle(),
        tracing,
        started,
        task: tokio::spawn(server.serve(router)),
    }
}

impl Traced {
    async fn started(&mut self) {
        tokio::time::timeout(SAFETY, self.started.recv())
            .await
            .expect("the handler starts")
            .expect("app gone");
    }

    async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(SAFETY, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
        let tracing = self.tracing;
        tokio::task::spawn_blocking(move || tracing.shutdown())
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------- clients

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); the
/// response's status.
async fn h1(addr: SocketAddr, request: &str) -> u16 {
    tokio::time::timeout(SAFETY, async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        let head = String::from_utf8_lossy(&answer);
        head.get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"))
    })
    .await
    .expect("timed out waiting for an HTTP/1.1 response")
}

fn get_h1(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n")
}

fn h2_get(path: &str) -> Request<()> {
    Request::get(format!("http://localhost{path}"))
        .body(())
        .unwrap()
}

async fn h2(client: &h2::client::SendRequest<Bytes>, path: &str) -> StatusCode {
    tokio::time::timeout(SAFETY, async {
        let mut c = client.clone().ready().await.expect("client ready");
        let (response, _) = c.send_request(h2_get(path), true).expect("send");
        response.await.expect("response").status()
    })
    .await
    .expect("timed out waiting for an HTTP/2 response")
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn spans_reach_a_grpc_collector_from_h1_and_h2_with_their_error_classes() {
    let mut rx = receiver(Protocol::Grpc).await;
    let mut server = traced(
        OtlpConfig::default()
            .endpoint(rx.endpoint.clone())
            .protocol(Protocol::Grpc)
            .service_name("otel-test"),
        Builder::default(),
    )
    .await;
    let addr = server.addr;

    // HTTP/1.1 with a sampled parent: the span is its child, keeps its
    // tracestate, and the handler's own span is the request span's child.
    let traceparent =
        format!("traceparent: 00-{PARENT_TRACE}-{PARENT_SPAN}-01\r\ntracestate: vendor=x\r\n");
    assert_eq!(h1(addr, &get_h1("/users/7", &traceparent)).await, 200);
    let (span, others) = rx.request_span("/users/7").await;
    assert_request(&span, 200, "1.1", None);
    assert_eq!(span.name, "GET /users/{id}");
    assert_eq!(text(&span, "http.route").as_deref(), Some("/users/{id}"));
    assert_eq!(hex(&span.trace_id), PARENT_TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN);
    assert_eq!(span.trace_state, "vendor=x");
    // The handler's span ended first, so it came first (same queue).
    let child = others
        .iter()
        .find(|s| s.name == "load user")
        .expect("the handler's span arrived before the request's");
    assert_eq!(child.trace_id, span.trace_id);
    assert_eq!(child.parent_span_id, span.span_id);

    // HTTP/1.1 error classes.
    assert_eq!(h1(addr, &get_h1("/missing", "")).await, 404);
    let (span, _) = rx.request_span("/missing").await;
    assert_request(&span, 404, "1.1", Some("client_error"));
    assert_eq!(span.name, "GET", "no route matched: the method alone");
    assert_eq!(
        span.parent_span_id,
        Vec::<u8>::new(),
        "no traceparent: a root"
    );

    assert_eq!(h1(addr, &get_h1("/fail", "")).await, 500);
    let (span, _) = rx.request_span("/fail").await;
    assert_request(&span, 500, "1.1", Some("server_error"));

    assert_eq!(h1(addr, &get_h1("/panic", "")).await, 500);
    let (span, _) = rx.request_span("/panic").await;
    assert_request(&span, 500, "1.1", Some("panic"));

    // The client leaves while the handler runs.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(get_h1("/slow", "").as_bytes()).await.unwrap();
    server.started().await;
    drop(tcp);
    let (span, _) = rx.request_span("/slow").await;
    assert_eq!(
        text(&span, "megaconn.error.class").as_deref(),
        Some("client_gone")
    );
    assert_eq!(text(&span, "error.type").as_deref(), Some("client_gone"));
    assert_eq!(
        int(&span, "http.response.status_code"),
        None,
        "nothing was sent"
    );

    // HTTP/2 (prior knowledge), same app.
    let client = h2c(addr).await;
    assert_eq!(h2(&client, "/users/9").await, StatusCode::OK);
    let (span, others) = rx.request_span("/users/9").await;
    assert_request(&span, 200, "2", None);
    assert_eq!(text(&span, "http.route").as_deref(), Some("/users/{id}"));
    assert!(others.iter().any(|s| s.parent_span_id == span.span_id));

    assert_eq!(h2(&client, "/missing").await, StatusCode::NOT_FOUND);
    let (span, _) = rx.request_span("/missing").await;
    assert_request(&span, 404, "2", Some("client_error"));

    assert_eq!(
        h2(&client, "/fail").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let (span, _) = rx.request_span("/fail").await;
    assert_request(&span, 500, "2", Some("server_error"));

    assert_eq!(
        h2(&client, "/panic").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let (span, _) = rx.request_span("/panic").await;
    assert_request(&span, 500, "2", Some("panic"));

    // The client resets the stream while the handler runs (dropping the
    // response future sends RST_STREAM(CANCEL)).
    {
        let mut c = client.clone().ready().await.expect("client ready");
        let (response, _) = c.send_request(h2_get("/slow"), true).expect("send");
        server.started().await;
        drop(response);
    }
    let (span, _) = rx.request_span("/slow").await;
    assert_eq!(
        text(&span, "megaconn.error.class").as_deref(),
        Some("client_gone")
    );
    assert_eq!(
        text(&span, "network.protocol.version").as_deref(),
        Some("2")
    );

    let tracing = server.tracing.clone();
    tokio::task::spawn_blocking(move || tracing.flush())
        .await
        .unwrap();
    let stats = server.handle.stats().otel.expect("tracing stats");
    assert_eq!(stats.spans_dropped, 0);
    assert_eq!(
        stats.spans_exported, 12,
        "10 requests, 2 with a child span: {stats:?}"
    );
    assert!(server
        .handle
        .render_metrics()
        .contains("megaconn_otel_spans_exported_total"));
    drop(client);
    server.stop().await;
    rx.handle.shutdown();
}

/// An OTLP/HTTP endpoint given without a path (`http://collector:4318`, as
/// in `OTEL_EXPORTER_OTLP_ENDPOINT`) gets `/v1/traces`, as the variable
/// does: the spans reach the collector. They used to be posted to `/`.
#[tokio::test]
async fn an_http_endpoint_without_a_path_posts_to_v1_traces() {
    let mut rx = receiver(Protocol::HttpProtobuf).await;
    let base = rx.endpoint.trim_end_matches("/v1/traces").to_string();
    let server = traced(
        OtlpConfig::default()
            .endpoint(base)
            .protocol(Protocol::HttpProtobuf),
        Builder::default(),
    )
    .await;
    assert_eq!(h1(server.addr, &get_h1("/users/1", "")).await, 200);
    let (span, _) = rx.request_span("/users/1").await;
    assert_request(&span, 200, "1.1", None);
    server.stop().await;
}

#[tokio::test]
async fn spans_reach_an_http_collector_sampled_by_their_parent_and_timeouts_are_classed() {
    let mut rx = receiver(Protocol::HttpProtobuf).await;
    // Ratio 0: only requests whose parent was sampled are traced.
    let server = traced(
        OtlpConfig::default()
            .endpoint(rx.endpoint.clone())
            .protocol(Protocol::HttpProtobuf)
            .sample_ratio(0.0),
        Builder::default().read_timeout(Some(Duration::from_millis(200))),
    )
    .await;
    let addr = server.addr;
    let sampled = format!("traceparent: 00-{PARENT_TRACE}-{PARENT_SPAN}-01\r\n");
    let unsampled = format!("traceparent: 00-{PARENT_TRACE}-{PARENT_SPAN}-00\r\n");

    assert_eq!(h1(addr, &get_h1("/users/1", "")).await, 200);
    assert_eq!(h1(addr, &get_h1("/users/2", &unsampled)).await, 200);
    assert_eq!(h1(addr, &get_h1("/users/3", &sampled)).await, 200);
    let (span, others) = rx.request_span("/users/3").await;
    assert_request(&span, 200, "1.1", None);
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN);
    assert_eq!(
        others.len(),
        1,
        "only /users/3's own child span: {others:?}"
    );

    // The body never completes: read_timeout answers 408 and the span says
    // timeout.
    let request =
        format!("POST /body HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n{sampled}\r\nab");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SAFETY, tcp.read_to_end(&mut answer))
        .await
        .expect("the server answers within read_timeout")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let (span, _) = rx.request_span("/body").await;
    assert_eq!(
        text(&span, "megaconn.error.class").as_deref(),
        Some("timeout")
    );
    assert_eq!(text(&span, "error.type").as_deref(), Some("timeout"));
    assert_eq!(int(&span, "http.response.status_code"), Some(408));

    // Everything queued has been sent: nothing came for /users/1 or /users/2.
    let tracing = server.tracing.clone();
    tokio::task::spawn_blocking(move || tracing.flush())
        .await
        .unwrap();
    if let Ok(span) = rx.spans.try_recv() {
        panic!("an unsampled request was traced: {span:?}");
    }
    server.stop().await;
    rx.handle.shutdown();
}

#[tokio::test]
async fn a_dead_collector_never_blocks_a_request_and_drops_are_counted() {
    // A collector that accepts connections (the kernel's backlog does) and
    // never answers: every export hangs until its timeout.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    let server = traced(
        OtlpConfig::default()
            .endpoint(endpoint)
            .protocol(Protocol::Grpc)
            .max_queue_spans(4)
            .max_batch_spans(2)
            .export_timeout(Duration::from_secs(120)),
        Builder::default(),
    )
    .await;
    const REQUESTS: u64 = 40;
    for i in 0..REQUESTS {
        assert_eq!(
            h1(server.addr, &get_h1(&format!("/users/{i}"), "")).await,
            200
        );
    }
    // Each request makes two spans (the handler's and the request's): at
    // most a full queue, one batch in the exporter and one being gathered
    // are kept.
    let stats = server.handle.stats().otel.expect("tracing stats");
    assert_eq!(stats.spans_exported, 0);
    assert!(stats.spans_dropped >= 2 * REQUESTS - 8, "{stats:?}");
    let metrics = server.handle.render_metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("megaconn_otel_spans_dropped_total"))
        .expect("the drop counter is exposed");
    assert!(
        line.ends_with(&format!(" {}", stats.spans_dropped)),
        "{line}"
    );
    // Not stopped through `stop`: the export thread is stuck in its export
    // until the process ends, which is the point.
    server.handle.shutdown();
    drop(dead);
}
