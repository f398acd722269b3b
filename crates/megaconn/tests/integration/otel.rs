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
//! parent-based sampling, a dead collector that must not slow requests, and
//! the resource's `service.instance.id` (one per process: checked in child
//! processes of this test binary, as the environment is the process's).

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
use megaconn::{Body, Builder};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
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
/// `spans`, with its resource's attributes.
struct Receiver {
    endpoint: String,
    spans: mpsc::UnboundedReceiver<(Span, Vec<KeyValue>)>,
    /// The resource attributes of the last span [`Receiver::next`] gave.
    resource: Vec<KeyValue>,
    server: common::AppServer,
}

type SpanSender = mpsc::UnboundedSender<(Span, Vec<KeyValue>)>;

fn flatten(request: ExportTraceServiceRequest, tx: &SpanSender) {
    for resource in request.resource_spans {
        let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                let _ = tx.send((span, attributes.clone()));
            }
        }
    }
}

/// The collector's gRPC service.
struct Grpc(SpanSender);

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
    let (server, endpoint) = match protocol {
        Protocol::Grpc => {
            let server = common::AppServer::one_worker(
                Builder::default(),
                TraceServiceServer::new(Grpc(tx)),
            );
            let endpoint = format!("http://{}", server.addr());
            (server, endpoint)
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
            let server = common::AppServer::one_worker(Builder::default(), service);
            let endpoint = format!("http://{}/v1/traces", server.addr());
            (server, endpoint)
        }
    };
    Receiver {
        endpoint,
        spans,
        resource: Vec::new(),
        server,
    }
}

impl Receiver {
    /// The next span; its resource's attributes go to `self.resource`.
    async fn next(&mut self) -> Span {
        let (span, resource) = tokio::time::timeout(SAFETY, self.spans.recv())
            .await
            .expect("timed out waiting for a span at the receiver")
            .expect("receiver gone");
        self.resource = resource;
        span
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
    attribute(&span.attributes, key)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> Option<String> {
    attribute_text(&span.attributes, key)
}

fn attribute_text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key) {
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
    server: common::AppServer,
    tracing: Tracing,
    started: mpsc::UnboundedReceiver<()>,
}

impl std::ops::Deref for Traced {
    type Target = common::AppServer;

    fn deref(&self) -> &common::AppServer {
        &self.server
    }
}

async fn traced(config: OtlpConfig, builder: Builder) -> Traced {
    let tracing = Tracing::otlp(config.batch_delay(Duration::from_millis(5))).expect("tracing");
    let (started_tx, started) = mpsc::unbounded_channel();
    let router = app(AppState {
        tracing: tracing.clone(),
        started: started_tx,
    });
    Traced {
        server: common::AppServer::one_worker(builder.tracing(tracing.clone()), router),
        tracing,
        started,
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
        self.server.summary().await;
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
    let addr = server.addr();

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
    rx.server.handle.shutdown();
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
    assert_eq!(h1(server.addr(), &get_h1("/users/1", "")).await, 200);
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
    let addr = server.addr();
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
    rx.server.handle.shutdown();
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
            h1(server.addr(), &get_h1(&format!("/users/{i}"), "")).await,
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

/// Each process's spans carry a `service.instance.id` of their own (the
/// semantic conventions' unique id of a service instance): a random UUID,
/// the same for every span of a process, different in another process (two
/// worker processes of `serve --processes`, or a process and its restart);
/// and `OTEL_RESOURCE_ATTRIBUTES` overrides it, as it does any resource
/// attribute. Each process here is this test binary running
/// [`resource_of_this_process`] alone, with its own environment. The spans
/// used to carry no `service.instance.id`.
#[test]
fn each_process_has_its_own_service_instance_id_which_the_environment_overrides() {
    let run = |resource_attributes: Option<&str>| -> Vec<(String, String)> {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args([
            "otel::resource_of_this_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        child.env_remove("OTEL_RESOURCE_ATTRIBUTES");
        child.env_remove("OTEL_SERVICE_NAME");
        if let Some(value) = resource_attributes {
            child.env("OTEL_RESOURCE_ATTRIBUTES", value);
        }
        let out = child.output().expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            // Not at the start of a line: the harness's `test ... ` may
            // come first.
            .filter_map(|l| Some(l.split_once(RESOURCE_LINE)?.1))
            .map(|l| {
                let (key, value) = l.split_once('=').expect("key=value");
                (key.to_string(), value.to_string())
            })
            .collect()
    };
    let instance = |resource: &[(String, String)]| -> String {
        let ids: Vec<&String> = resource
            .iter()
            .filter(|(k, _)| k == "service.instance.id")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(ids.len(), 1, "one service.instance.id: {resource:?}");
        ids[0].clone()
    };
    let first = run(None);
    let id = instance(&first);
    let groups: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "a UUID: {id}");
    assert!(id.as_bytes()[14] == b'4', "version 4: {id}");
    assert!(
        first.contains(&("service.name".into(), "instance-test".into())),
        "{first:?}"
    );
    let second = instance(&run(None));
    assert_ne!(id, second, "another process, another instance");
    let set = run(Some(
        "service.instance.id=pod-7,deployment.environment=test",
    ));
    assert_eq!(instance(&set), "pod-7", "{set:?}");
    assert!(
        set.contains(&("deployment.environment".into(), "test".into())),
        "{set:?}"
    );
}

/// What [`resource_of_this_process`] prints before each resource attribute.
const RESOURCE_LINE: &str = "resource attribute: ";

/// Two requests' spans, through one tracing pipeline and then another of
/// the same process, reach a collector; prints their resource's attributes
/// (one line each, [`RESOURCE_LINE`]) once both say the same. Run alone by
/// the test above, in a process of its own.
#[tokio::test]
#[ignore = "run by each_process_has_its_own_service_instance_id_..., in a process of its own"]
async fn resource_of_this_process() {
    let mut rx = receiver(Protocol::Grpc).await;
    let mut resources = Vec::new();
    for path in ["/users/1", "/users/2"] {
        let server = traced(
            OtlpConfig::default()
                .endpoint(rx.endpoint.clone())
                .protocol(Protocol::Grpc)
                .service_name("instance-test"),
            Builder::default(),
        )
        .await;
        assert_eq!(h1(server.addr(), &get_h1(path, "")).await, 200);
        rx.request_span(path).await;
        resources.push(std::mem::take(&mut rx.resource));
        server.stop().await;
    }
    let id = |r: &[KeyValue]| attribute_text(r, "service.instance.id");
    assert!(id(&resources[0]).is_some(), "{:?}", resources[0]);
    assert_eq!(id(&resources[0]), id(&resources[1]), "one id per process");
    for kv in &resources[0] {
        if let Some(Value::StringValue(v)) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            println!("{RESOURCE_LINE}{}={v}", kv.key);
        }
    }
    rx.server.handle.shutdown();
}

/// A request span says who asked and where, as the HTTP server span
/// conventions recommend: `client.address` (the peer's IP), `server.port`
/// (the local port the connection arrived on) and `user_agent.original`,
/// over HTTP/1.1 and HTTP/2, with `connect_info` off (the default, when
/// the connection keeps no addresses) and on. They were missing.
#[tokio::test]
async fn spans_name_the_client_the_server_port_and_the_user_agent() {
    for connect_info in [false, true] {
        let mut rx = receiver(Protocol::Grpc).await;
        let server = traced(
            OtlpConfig::default()
                .endpoint(rx.endpoint.clone())
                .protocol(Protocol::Grpc),
            Builder::default().connect_info(connect_info),
        )
        .await;
        let addr = server.addr();
        let agent = "User-Agent: curl/8.5.0 (megaconn test)\r\n";
        assert_eq!(h1(addr, &get_h1("/users/1", agent)).await, 200);
        let (span, _) = rx.request_span("/users/1").await;
        assert_eq!(text(&span, "client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(int(&span, "server.port"), Some(i64::from(addr.port())));
        assert_eq!(
            text(&span, "user_agent.original").as_deref(),
            Some("curl/8.5.0 (megaconn test)"),
            "{connect_info}"
        );
        // Without one, no attribute.
        assert_eq!(h1(addr, &get_h1("/users/2", "")).await, 200);
        let (span, _) = rx.request_span("/users/2").await;
        assert_eq!(text(&span, "user_agent.original"), None);

        let client = h2c(addr).await;
        let mut c = client.clone().ready().await.expect("client ready");
        let request = Request::get("http://localhost/users/3")
            .header("user-agent", "h2-test/1")
            .body(())
            .unwrap();
        let (response, _) = c.send_request(request, true).expect("send");
        let status = tokio::time::timeout(SAFETY, response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.status(), StatusCode::OK);
        let (span, _) = rx.request_span("/users/3").await;
        assert_eq!(text(&span, "client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(int(&span, "server.port"), Some(i64::from(addr.port())));
        assert_eq!(
            text(&span, "user_agent.original").as_deref(),
            Some("h2-test/1")
        );
        drop((c, client));
        server.stop().await;
    }
}

/// A request the forced shutdown cut off (at `shutdown_timeout`, its
/// handler still running) ends its span as an error of class `shutdown`:
/// it was not served. Its span used to end as a success with no status.
#[tokio::test]
async fn a_request_cut_at_shutdown_timeout_is_a_shutdown_error() {
    let mut rx = receiver(Protocol::Grpc).await;
    let mut server = traced(
        OtlpConfig::default()
            .endpoint(rx.endpoint.clone())
            .protocol(Protocol::Grpc),
        Builder::default().shutdown_timeout(Duration::from_millis(200)),
    )
    .await;
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(get_h1("/slow", "").as_bytes()).await.unwrap();
    server.started().await;
    server.stop().await;
    let (span, _) = rx.request_span("/slow").await;
    assert_eq!(
        text(&span, "megaconn.error.class").as_deref(),
        Some("shutdown")
    );
    assert_eq!(text(&span, "error.type").as_deref(), Some("shutdown"));
    assert_eq!(int(&span, "http.response.status_code"), None);
    drop(tcp);
}
