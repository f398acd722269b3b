//! OpenTelemetry tracing (the `otel` cargo feature): a span per request,
//! following the HTTP semantic conventions, exported over OTLP.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use megaconn::otel::{OtlpConfig, Protocol, Tracing};
//!
//! // OTEL_* variables first, then what the program says.
//! let tracing = Tracing::otlp(
//!     OtlpConfig::from_env()?
//!         .endpoint("http://127.0.0.1:4317")
//!         .protocol(Protocol::Grpc)
//!         .sample_ratio(0.01),
//! )?;
//! megaconn::Server::bind("127.0.0.1:8080".parse()?)
//!     .tracing(tracing.clone())
//!     .serve(app)
//!     .await?;
//! tracing.shutdown(); // sends what is still queued
//! # Ok(()) }
//! ```
//!
//! # What each request gets
//!
//! * **Sampling first.** A request with a W3C `traceparent` follows its
//!   parent's sampled flag; one without is sampled with probability
//!   [`OtlpConfig::sample_ratio`] (parent-based ratio sampling, as
//!   `parentbased_traceidratio`). With [`OtlpConfig::parent_based`] off
//!   (`OTEL_TRACES_SAMPLER=always_on`, `always_off` or `traceidratio`) the
//!   parent's flag is ignored and every request is sampled by the ratio.
//!   The ratio decides from the trace id, by the SDK's `TraceIdRatioBased`
//!   rule (the parent's id, or the id drawn for a new trace, which its span
//!   then gets): a trace is sampled alike in every process with the same
//!   ratio, and the application's spans agree with their request's. The
//!   decision reads the header in place and draws at most one trace id: an
//!   unsampled request allocates nothing.
//! * **A server span** (`SpanKind::Server`) named `GET` or, when the service
//!   says which route matched, `GET /users/{id}`, with `http.request.method`,
//!   `url.scheme`, `url.path`, `network.protocol.version`,
//!   `http.response.status_code`, `http.route` and `error.type`. Its parent
//!   is the request's `traceparent` (and its `tracestate` is kept).
//! * **A resource** saying who sent it: `service.name` and
//!   `service.instance.id`, a random UUID per process (so that worker
//!   processes and restarts can be told apart), which
//!   `OTEL_RESOURCE_ATTRIBUTES` may override (`resource.rs`).
//! * **An error class** in `megaconn.error.class`: `client_error` (4xx),
//!   `server_error` (5xx), `timeout` (`read_timeout`/`write_timeout`),
//!   `panic`, `client_gone` (closed or reset before the response was
//!   complete). All but `client_error` also set `error.type` (the status
//!   code for a 5xx, else the class) and the span status to error, as the
//!   conventions ask of server spans.
//!
//! # Joining the trace from a handler
//!
//! The span's context is in the request's extensions as an
//! [`opentelemetry::Context`], so spans and outgoing calls inside the
//! handler join the trace. With `tracing` and `tracing-opentelemetry`:
//!
//! ```ignore
//! use tracing_opentelemetry::OpenTelemetrySpanExt;
//! async fn handler(req: http::Request<megaconn::Body>) -> ... {
//!     let cx = req.extensions().get::<opentelemetry::Context>().cloned().unwrap_or_default();
//!     let span = tracing::info_span!("load user");
//!     span.set_parent(cx.clone());          // a child of the request's span
//!     // outgoing call: the W3C headers for the next service
//!     let mut headers = http::HeaderMap::new();
//!     opentelemetry::global::get_text_map_propagator(|p| {
//!         p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(&mut headers))
//!     });
//!     ...
//! }
//! ```
//!
//! The `tracing-opentelemetry` layer can export through the same pipeline:
//! give it `Tracing::provider().tracer("my-app")`. A request whose parent
//! said "not sampled" still gets the parent's context (so the flag travels
//! on); an unsampled request without a parent gets none.
//!
//! The route: axum's `MatchedPath` is known inside the router only, so copy
//! it to the response with a `route_layer` (which runs after routing):
//!
//! ```ignore
//! let app = app.route_layer(axum::middleware::from_fn(
//!     |req: axum::extract::Request, next: axum::middleware::Next| async move {
//!         let route = req.extensions().get::<axum::extract::MatchedPath>().cloned();
//!         let mut response = next.run(req).await;
//!         if let Some(route) = route {
//!             response.extensions_mut().insert(route);
//!         }
//!         response
//!     },
//! ));
//! // or, for any service, by hand:
//! response.extensions_mut().insert(megaconn::otel::HttpRoute::new("/users/{id}"));
//! ```
//!
//! megaconn reads `HttpRoute` and, with the `axum` feature, `MatchedPath`
//! from the response's extensions.
//!
//! # Traces only, not metrics
//!
//! Spans are all that goes over OTLP: the server's counters
//! ([`ServerStats`](crate::ServerStats)) are not exported as OpenTelemetry
//! metrics, on purpose: they are Prometheus families on `/metrics`
//! ([`ServerHandle::render_metrics`](crate::ServerHandle::render_metrics),
//! every field of `ServerStats` shown there or listed with why, a test
//! says), which a collector takes with its `prometheus` receiver. One
//! exposition, so there is no second mapping of the counters to keep in
//! step. This exporter's own counters (spans exported, dropped, failed,
//! queued) are among them: [`Tracing::stats`], `megaconn_otel_spans_*`.
//!
//! # Export
//!
//! Finished spans go into a bounded queue ([`OtlpConfig::max_queue_spans`])
//! that one thread of its own (`megaconn-otel`, with a current-thread tokio
//! runtime for the gRPC and HTTP clients) drains in batches. A worker only
//! ever does a non-blocking `try_send`: when the collector is slow or dead
//! the queue fills, further spans are dropped and counted
//! (`megaconn_otel_spans_dropped_total`), and no request waits. The SDK's own
//! `BatchSpanProcessor` is not used because it neither counts its drops where
//! a Prometheus scrape can see them nor gives the exporter a tokio runtime.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

pub use opentelemetry;
pub use opentelemetry_sdk;

mod export;
mod resource;
pub(crate) mod span;

use export::{ExportStats, QueueProcessor, Shared};
use span::RootSampler;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (default port 4318, path
    /// `/v1/traces`).
    HttpProtobuf,
}

impl std::str::FromStr for Protocol {
    type Err = OtelError;

    /// The values of `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc`, `http/protobuf`.
    fn from_str(s: &str) -> Result<Protocol, OtelError> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
            other => Err(OtelError::Config(format!(
                "unknown OTLP protocol {other:?}: use grpc or http/protobuf"
            ))),
        }
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// A setting (or an `OTEL_*` variable) has a value that cannot work.
    #[error("OpenTelemetry configuration: {0}")]
    Config(String),
    /// The OTLP exporter could not be built (a malformed endpoint, say).
    #[error("cannot build the OTLP exporter: {0}; check the endpoint (e.g. http://127.0.0.1:4317 for grpc, http://127.0.0.1:4318 for http/protobuf)")]
    Exporter(String),
}

/// Default [`OtlpConfig::max_queue_spans`], the SDK's `OTEL_BSP_MAX_QUEUE_SIZE`.
pub const DEFAULT_MAX_QUEUE_SPANS: usize = 2048;
/// Default [`OtlpConfig::max_batch_spans`], the SDK's `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
pub const DEFAULT_MAX_BATCH_SPANS: usize = 512;
/// Default [`OtlpConfig::batch_delay`], the SDK's `OTEL_BSP_SCHEDULE_DELAY`.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(5);
/// Default [`OtlpConfig::export_timeout`]: shorter than the SDK's 30 s
/// `OTEL_BSP_EXPORT_TIMEOUT`, so that a dead collector fills the queue more
/// slowly than it is retried.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How spans are sampled and exported. Start from [`OtlpConfig::from_env`]
/// (the standard `OTEL_*` variables over the defaults), then override.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    endpoint: Option<String>,
    protocol: Protocol,
    sample_ratio: f64,
    /// Whether a request's `traceparent` decides its sampling (the
    /// `parentbased_*` samplers) or the ratio alone does.
    parent_based: bool,
    service_name: Option<String>,
    max_queue_spans: usize,
    max_batch_spans: usize,
    batch_delay: Duration,
    /// How long the export thread waits for one export.
    export_timeout: Duration,
    /// The exporter's own timeout, only when the program set one
    /// ([`OtlpConfig::export_timeout`]): otherwise the exporter reads
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT`,
    /// which passing a timeout always would override.
    exporter_timeout: Option<Duration>,
}

impl Default for OtlpConfig {
    /// The defaults, without reading the environment.
    fn default() -> OtlpConfig {
        OtlpConfig {
            endpoint: None,
            protocol: Protocol::Grpc,
            sample_ratio: 1.0,
            parent_based: true,
            service_name: None,
            max_queue_spans: DEFAULT_MAX_QUEUE_SPANS,
            max_batch_spans: DEFAULT_MAX_BATCH_SPANS,
            batch_delay: DEFAULT_BATCH_DELAY,
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
            exporter_timeout: None,
        }
    }
}

impl OtlpConfig {
    /// The defaults, overridden by the standard variables that are set:
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio`,
    /// `parentbased_*`) with `OTEL_TRACES_SAMPLER_ARG`,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
    /// `OTEL_BSP_SCHEDULE_DELAY` and `OTEL_BSP_EXPORT_TIMEOUT` (ms). The
    /// exporter itself reads the endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), headers, compression and
    /// timeout (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, ms) variables; the export thread waits
    /// that long for an export too, unless `OTEL_BSP_EXPORT_TIMEOUT` says
    /// otherwise. The SDK reads `OTEL_SERVICE_NAME` and
    /// `OTEL_RESOURCE_ATTRIBUTES`. A variable with a bad value is an error.
    pub fn from_env() -> Result<OtlpConfig, OtelError> {
        OtlpConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// [`OtlpConfig::from_env`] over any source of variables (for tests).
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<OtlpConfig, OtelError> {
        let mut c = OtlpConfig::default();
        if let Some(p) =
            var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            c.protocol = p.parse()?;
        }
        if let Some(sampler) = var("OTEL_TRACES_SAMPLER") {
            let arg = var("OTEL_TRACES_SAMPLER_ARG");
            // The spec's always_on, always_off and traceidratio do not look
            // at the parent; only the parentbased_* samplers do.
            c.parent_based = sampler.trim().starts_with("parentbased_");
            c.sample_ratio = match sampler.trim() {
                "always_on" | "parentbased_always_on" => 1.0,
                "always_off" | "parentbased_always_off" => 0.0,
                "traceidratio" | "parentbased_traceidratio" => match arg {
                    None => 1.0,
                    Some(a) => parse_ratio(&a)?,
                },
                other => {
                    return Err(OtelError::Config(format!(
                        "OTEL_TRACES_SAMPLER={other:?} is not supported: use \
                         parentbased_traceidratio (with OTEL_TRACES_SAMPLER_ARG), \
                         parentbased_always_on, parentbased_always_off, \
                         traceidratio, always_on or always_off"
                    )))
                }
            };
        }
        let count = |name: &str| -> Result<Option<usize>, OtelError> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| {
                            OtelError::Config(format!("{name}={v:?}: expected a positive number"))
                        })
                })
                .transpose()
        };
        let millis = |name: &str| -> Result<Option<Duration>, OtelError> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| {
                            OtelError::Config(format!("{name}={v:?}: expected milliseconds"))
                        })
                })
                .transpose()
        };
        if let Some(n) = count("OTEL_BSP_MAX_QUEUE_SIZE")? {
            c.max_queue_spans = n;
        }
        if let Some(n) = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
            c.max_batch_spans = n;
        }
        if let Some(d) = millis("OTEL_BSP_SCHEDULE_DELAY")? {
            c.batch_delay = d;
        }
        // The exporter reads its own timeout; the export thread must not
        // give up on an export sooner than the exporter would.
        let otlp_timeout = match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
            Some(_) => millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")?,
            None => millis("OTEL_EXPORTER_OTLP_TIMEOUT")?,
        };
        if let Some(d) = otlp_timeout {
            c.export_timeout = d;
        }
        if let Some(d) = millis("OTEL_BSP_EXPORT_TIMEOUT")? {
            c.export_timeout = d;
        }
        Ok(c)
    }

    /// The collector's URL, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318/v1/traces` (HTTP: the full URL; one with no
    /// path gets `/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` does).
    /// Default: the exporter's (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else localhost on the protocol's port).
    pub fn endpoint(mut self, url: impl Into<String>) -> OtlpConfig {
        self.endpoint = Some(url.into());
        self
    }

    /// The transport. Default: gRPC (or `OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub fn protocol(mut self, protocol: Protocol) -> OtlpConfig {
        self.protocol = protocol;
        self
    }

    /// The share of requests without a sampled-or-not parent (or of all
    /// requests, when not [`parent_based`](OtlpConfig::parent_based)) that
    /// are traced, from `0.0` (none: tracing is then nearly free) to `1.0`
    /// (all).
    /// Default: `1.0` (or `OTEL_TRACES_SAMPLER_ARG`). Out-of-range values
    /// are clamped.
    pub fn sample_ratio(mut self, ratio: f64) -> OtlpConfig {
        self.sample_ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self
    }

    /// Whether a request with a W3C `traceparent` follows its parent's
    /// sampled flag (`true`, the `parentbased_*` samplers) or is sampled by
    /// [`sample_ratio`](OtlpConfig::sample_ratio) like any other (`false`:
    /// `always_on`, `always_off`, `traceidratio`). Default: `true` (or as
    /// `OTEL_TRACES_SAMPLER` says).
    pub fn parent_based(mut self, parent_based: bool) -> OtlpConfig {
        self.parent_based = parent_based;
        self
    }

    /// The `service.name` resource attribute. Default: `OTEL_SERVICE_NAME`,
    /// else the SDK's `unknown_service`.
    pub fn service_name(mut self, name: impl Into<String>) -> OtlpConfig {
        self.service_name = Some(name.into());
        self
    }

    /// Finished spans that may wait for export; past this they are dropped
    /// and counted. Default: [`DEFAULT_MAX_QUEUE_SPANS`] (each is a few
    /// hundred bytes).
    pub fn max_queue_spans(mut self, n: usize) -> OtlpConfig {
        self.max_queue_spans = n.max(1);
        self
    }

    /// Spans per export request. Default: [`DEFAULT_MAX_BATCH_SPANS`].
    pub fn max_batch_spans(mut self, n: usize) -> OtlpConfig {
        self.max_batch_spans = n.max(1);
        self
    }

    /// How long a span may wait for its batch to fill. Default:
    /// [`DEFAULT_BATCH_DELAY`].
    pub fn batch_delay(mut self, delay: Duration) -> OtlpConfig {
        self.batch_delay = delay;
        self
    }

    /// How long one export may take before it counts as failed (the
    /// exporter's timeout and the export thread's wait). Default:
    /// `OTEL_BSP_EXPORT_TIMEOUT`, `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, else [`DEFAULT_EXPORT_TIMEOUT`].
    pub fn export_timeout(mut self, timeout: Duration) -> OtlpConfig {
        self.export_timeout = timeout;
        self.exporter_timeout = Some(timeout);
        self
    }

    /// The sample ratio set.
    pub fn ratio(&self) -> f64 {
        self.sample_ratio
    }

    /// Whether sampling follows a request's parent (see
    /// [`parent_based`](OtlpConfig::parent_based)).
    pub fn is_parent_based(&self) -> bool {
        self.parent_based
    }
}

fn parse_ratio(s: &str) -> Result<f64, OtelError> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(OtelError::Config(format!(
            "OTEL_TRACES_SAMPLER_ARG={s:?}: expected a ratio from 0.0 to 1.0"
        ))),
    }
}

/// A server's tracing: the sampler, the tracer and the export pipeline.
/// Give it to [`Builder::tracing`](crate::Builder::tracing); cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracing {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The request spans' provider (always samples what it is given).
    requests: SdkTracerProvider,
    /// The application's provider ([`Tracing::provider`]).
    app: SdkTracerProvider,
    tracer: SdkTracer,
    sampler: RootSampler,
    stats: Arc<ExportStats>,
}

impl Tracing {
    /// Sets up OTLP export as `config` says: starts the `megaconn-otel`
    /// export thread and builds the exporter there. Fails on a malformed
    /// endpoint; a collector that is merely down is not an error (its spans
    /// fail to export and are counted).
    pub fn otlp(config: OtlpConfig) -> Result<Tracing, OtelError> {
        plain_endpoint(config.endpoint.as_deref(), |name| std::env::var(name).ok())?;
        let build_config = config.clone();
        let build = move || -> Result<opentelemetry_otlp::SpanExporter, OtelError> {
            let builder = opentelemetry_otlp::SpanExporter::builder();
            let built = match build_config.protocol {
                Protocol::Grpc => {
                    let mut b = builder.with_tonic();
                    if let Some(t) = build_config.exporter_timeout {
                        b = b.with_timeout(t);
                    }
                    if let Some(url) = &build_config.endpoint {
                        b = b.with_endpoint(url.clone());
                    }
                    b.build()
                }
                Protocol::HttpProtobuf => {
                    let mut b = builder
                        .with_http()
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                    if let Some(t) = build_config.exporter_timeout {
                        b = b.with_timeout(t);
                    }
                    if let Some(url) = &build_config.endpoint {
                        b = b.with_endpoint(http_traces_url(url));
                    }
                    b.build()
                }
            };
            built.map_err(|e| OtelError::Exporter(e.to_string()))
        };
        let stats = Arc::new(ExportStats::default());
        let processor = Arc::new(QueueProcessor::start(build, &config, stats.clone())?);
        let resource = resource::resource(config.service_name.as_deref());
        // Two providers on one export queue. The request spans' provider
        // samples everything it is given: the decision was made before the
        // span was built (span.rs). The application's provider samples as
        // OTEL_TRACES_SAMPLER would: children follow their parent (the
        // request's context), roots by the same ratio; or, not parent-based,
        // every span by the ratio.
        let ratio = Sampler::TraceIdRatioBased(config.sample_ratio);
        let app_sampler = if config.parent_based {
            Sampler::ParentBased(Box::new(ratio))
        } else {
            ratio
        };
        let requests = span::requests_provider()
            .with_resource(resource.clone())
            .with_span_processor(Shared(processor.clone()))
            .build();
        let app = SdkTracerProvider::builder()
            .with_sampler(app_sampler)
            .with_resource(resource)
            .with_span_processor(Shared(processor))
            .build();
        Ok(Tracing {
            inner: Arc::new(Inner {
                tracer: requests.tracer("megaconn"),
                requests,
                app,
                sampler: RootSampler::new(config.sample_ratio, config.parent_based),
                stats,
            }),
        })
    }

    /// A tracer provider for the application's own spans (e.g.
    /// `provider().tracer("my-app")` for the `tracing-opentelemetry` layer):
    /// they share the server's export queue, a span under a request's
    /// context follows the request's sampling, and a root span is sampled
    /// by the same ratio. Its spans are dropped once [`Tracing::shutdown`]
    /// has run.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.inner.app
    }

    /// What became of the spans so far.
    pub fn stats(&self) -> crate::observe::stats::OtelStats {
        self.inner.stats.snapshot()
    }

    /// Exports what is queued, waiting up to twice the export timeout; for a
    /// test or before a planned stop. Blocks: not for a worker.
    pub fn flush(&self) {
        // One queue: flushing through either provider flushes both.
        if let Err(e) = self.inner.requests.force_flush() {
            tracing::warn!(error = %e, "flushing spans failed");
        }
    }

    /// Exports what is queued and stops the export thread, waiting up to 5 s
    /// (the SDK's shutdown timeout). Call it once the server has stopped;
    /// spans ended afterwards are dropped. Dropping the last clone of a
    /// `Tracing` does the same.
    pub fn shutdown(&self) {
        // The queue stops with the first; the second has nothing left to do.
        if let Err(e) = self.inner.requests.shutdown() {
            tracing::warn!(error = %e, "stopping the span export failed");
        }
        let _ = self.inner.app.shutdown();
    }

    /// The request path's entry: see `span.rs`.
    #[inline]
    pub(crate) fn start<B>(
        &self,
        request: &mut http::Request<B>,
        secure: bool,
        addrs: impl FnOnce() -> Option<crate::observe::trace::Addrs>,
    ) -> Option<Box<span::RequestSpan>> {
        span::start(
            &self.inner.tracer,
            &self.inner.sampler,
            request,
            secure,
            addrs,
        )
    }
}

/// The route the service matched, for `http.route` and the span's name:
/// put it in the response's extensions (axum users can copy `MatchedPath`
/// instead, which megaconn also reads with its `axum` feature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute(std::borrow::Cow<'static, str>);

impl HttpRoute {
    /// A route template such as `/users/{id}` (low cardinality: not the path).
    pub fn new(route: impl Into<std::borrow::Cow<'static, str>>) -> HttpRoute {
        HttpRoute(route.into())
    }

    /// The template.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Refuses an `https` endpoint (given, or in `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// / `OTEL_EXPORTER_OTLP_ENDPOINT`, which the exporter reads when none is
/// given): megaconn builds its OTLP clients without TLS, and without this
/// check the gRPC one failed at start asking for cargo features an operator
/// of the binary cannot set, and the HTTP one failed every export later with
/// "check that the collector is up". Why no TLS: a collector on the host or
/// its network (a sidecar, a node agent) is how OTLP is usually deployed,
/// and it forwards over TLS; a TLS client here would add a second TLS stack
/// configuration (roots, client certificates) to a server that already has
/// one for its listeners.
fn plain_endpoint(
    endpoint: Option<&str>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(), OtelError> {
    let (url, from) = match endpoint {
        Some(url) => (url.to_owned(), "the endpoint"),
        None => match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|u| (u, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|u| (u, "OTEL_EXPORTER_OTLP_ENDPOINT"))
            }) {
            Some(found) => found,
            None => return Ok(()),
        },
    };
    if url
        .trim_start()
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        return Err(OtelError::Config(format!(
            "{from} {url:?} is https, and megaconn's OTLP export speaks plain http only: \
             send spans to a collector on this host or its network (e.g. an OpenTelemetry \
             Collector at http://127.0.0.1:4317 for grpc, http://127.0.0.1:4318 for \
             http/protobuf) that forwards them over TLS"
        )));
    }
    Ok(())
}

/// The OTLP/HTTP URL to post spans to: `url`, with `/v1/traces` added when
/// it has no path (`http://collector:4318`). The exporter posts to a URL
/// given in code as it is, to `/` there, which collectors answer 404, while
/// the same URL in `OTEL_EXPORTER_OTLP_ENDPOINT` gets the signal's path; an
/// endpoint said either way now reaches the same place. A URL with a path
/// (`/v1/traces`, a proxy's prefix) is kept.
fn http_traces_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.path() == "/" && uri.query().is_none() => {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_url_without_a_path_gets_the_traces_path() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        for kept in ["http://c:4318/v1/traces", "https://c/otlp/v1/traces"] {
            assert_eq!(http_traces_url(kept), kept);
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn an_https_endpoint_is_refused_naming_what_to_do() {
        let none = |_: &str| None;
        assert!(plain_endpoint(Some("http://c:4317"), none).is_ok());
        assert!(plain_endpoint(None, none).is_ok());
        let e = plain_endpoint(Some("HTTPS://c:4317"), none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plain http only") && e.contains("http://127.0.0.1:4317"),
            "{e}"
        );
        let e = plain_endpoint(None, vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        // The traces variable wins over the general one, as in the exporter.
        assert!(plain_endpoint(
            None,
            vars(&[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c")
            ])
        )
        .is_ok());
    }

    #[test]
    fn env_overrides_defaults() {
        let c = OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ]))
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.sample_ratio, 0.25);
        assert_eq!(c.max_queue_spans, 100);
        assert_eq!(c.batch_delay, Duration::from_millis(250));
        let c = OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ]))
        .unwrap();
        assert_eq!(
            c.protocol,
            Protocol::HttpProtobuf,
            "the traces variable wins"
        );
        assert_eq!(c.sample_ratio, 0.0);
    }

    #[test]
    fn bad_env_values_say_what_to_write() {
        for bad in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "5s"),
        ] {
            let e = OtlpConfig::from_vars(vars(&[bad])).unwrap_err();
            assert!(
                e.to_string().contains(bad.0) || e.to_string().contains("grpc"),
                "{e}"
            );
        }
        let e = OtlpConfig::from_vars(vars(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("0.0 to 1.0"), "{e}");
    }

    /// Only the `parentbased_*` samplers follow a request's parent (the
    /// OTel spec's always_on, always_off and traceidratio ignore it).
    #[test]
    fn only_parentbased_samplers_are_parent_based() {
        for (sampler, ratio, parent_based) in [
            ("always_on", 1.0, false),
            ("always_off", 0.0, false),
            ("traceidratio", 0.25, false),
            ("parentbased_always_on", 1.0, true),
            ("parentbased_always_off", 0.0, true),
            ("parentbased_traceidratio", 0.25, true),
        ] {
            let c = OtlpConfig::from_vars(vars(&[
                ("OTEL_TRACES_SAMPLER", sampler),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]))
            .unwrap();
            assert_eq!(c.ratio(), ratio, "{sampler}");
            assert_eq!(c.is_parent_based(), parent_based, "{sampler}");
        }
        assert!(OtlpConfig::default().is_parent_based());
    }

    /// The exporter gets a timeout only when the program sets one; else it
    /// reads OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT itself, and the export
    /// thread waits as long (unless OTEL_BSP_EXPORT_TIMEOUT says otherwise).
    #[test]
    fn the_exporter_reads_its_own_timeout_unless_the_program_sets_one() {
        let c = OtlpConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(c.exporter_timeout, None);
        assert_eq!(c.export_timeout, DEFAULT_EXPORT_TIMEOUT);
        let c = OtlpConfig::from_vars(vars(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "30000")])).unwrap();
        assert_eq!(c.exporter_timeout, None);
        assert_eq!(c.export_timeout, Duration::from_secs(30));
        let c = OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "20000"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "5000"),
        ]))
        .unwrap();
        assert_eq!(c.exporter_timeout, None);
        assert_eq!(c.export_timeout, Duration::from_secs(5));
        let c = c.export_timeout(Duration::from_secs(3));
        assert_eq!(c.exporter_timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.export_timeout, Duration::from_secs(3));
        let e = OtlpConfig::from_vars(vars(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")])).unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT"), "{e}");
    }
}
