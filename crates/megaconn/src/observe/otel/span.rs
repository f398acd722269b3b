//! One request's span: the sampling decision (made before anything is
//! allocated), the W3C trace context read from the request, the attributes
//! of the HTTP semantic conventions, the error class, the end.

use std::borrow::Cow;
use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider, TracerProviderBuilder,
};

use crate::observe::trace::{Addrs, ErrorClass};

/// `megaconn.error.class`: why a request ended badly.
const ERROR_CLASS: &str = "megaconn.error.class";

/// The W3C header names, built once: a `&str` key is parsed and lowercased
/// on every lookup (~160 instructions under callgrind, bench/OTEL.md).
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Up to this many header values, a lookup scans them instead of hashing.
const SCAN_HEADERS: usize = 8;

/// A header's value. `HeaderMap::get` hashes the name (another ~160
/// instructions per unsampled request under callgrind: most of what tracing
/// costs a request it does not sample); comparing a few names is a handful
/// each. Past [`SCAN_HEADERS`] the hash wins.
#[inline]
fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    if headers.len() <= SCAN_HEADERS {
        headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

/// Ratio sampling, parent-based or not, decided from the trace id as the
/// SDK's `Sampler::TraceIdRatioBased` decides: the same trace is sampled
/// alike in every process with the same ratio, and the application's spans
/// (sampled by the SDK, `mod.rs`) agree with their request's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RootSampler {
    /// A trace is sampled when the lower 8 bytes of its id (big-endian),
    /// shifted right by one, are below this: the SDK's rule (`ratio × 2^63`;
    /// `u64::MAX`, above every shifted value, for a ratio of 1).
    threshold: u64,
    /// A request with a parent follows the parent's flag (the
    /// `parentbased_*` samplers); when false the ratio decides for every
    /// request (`always_on`, `always_off`, `traceidratio`).
    parent_based: bool,
}

/// What [`RootSampler::decide`] said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Drop,
    Sample,
    /// A request without a parent, sampled by the trace id drawn for it:
    /// its span must get that id ([`DecidedIds`]).
    SampleRoot(TraceId),
}

impl RootSampler {
    pub(crate) fn new(ratio: f64, parent_based: bool) -> RootSampler {
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio.max(0.0) * (1u64 << 63) as f64) as u64
        };
        RootSampler {
            threshold,
            parent_based,
        }
    }

    /// Whether a request with `parent` (if any) is traced. A root's trace id
    /// is drawn here (from the SDK's thread-local generator: no allocation,
    /// no lock) unless the ratio is 0 or 1, when any id decides alike.
    #[inline]
    fn decide(&self, parent: Option<Parent>) -> Decision {
        let sampled = match parent {
            Some(p) if self.parent_based => p.flags.is_sampled(),
            Some(p) => self.samples(p.trace_id),
            None => match self.threshold {
                u64::MAX => true,
                0 => false,
                _ => {
                    let id = RandomIdGenerator::default().new_trace_id();
                    return match self.samples(id) {
                        true => Decision::SampleRoot(id),
                        false => Decision::Drop,
                    };
                }
            },
        };
        match sampled {
            true => Decision::Sample,
            false => Decision::Drop,
        }
    }

    /// The SDK's `TraceIdRatioBased` rule for `trace_id`.
    #[inline]
    fn samples(&self, trace_id: TraceId) -> bool {
        let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().expect("8 bytes"));
        (low >> 1) < self.threshold
    }
}

thread_local! {
    /// The trace id a root request's span must get, set just before the
    /// span is built (`start_sampled`) and taken by [`DecidedIds`].
    static DECIDED: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The request spans' id generator: a root span gets the trace id its
/// sampling was decided on ([`Decision::SampleRoot`]); the SDK draws a root's
/// id itself and takes none from the span builder. Every other id is random.
#[derive(Debug, Default)]
struct DecidedIds;

impl IdGenerator for DecidedIds {
    fn new_trace_id(&self) -> TraceId {
        DECIDED
            .take()
            .unwrap_or_else(|| RandomIdGenerator::default().new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        RandomIdGenerator::default().new_span_id()
    }
}

/// The request spans' provider, before its resource and processor: it
/// samples every span it is given (the decision was made before, by
/// [`RootSampler`]), and gives a root span the trace id decided on.
pub(crate) fn requests_provider() -> TracerProviderBuilder {
    SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_id_generator(DecidedIds)
}

/// A `traceparent` as read off the header, without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parent {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase;
/// later versions may append `-…`). Anything invalid reads as no parent, as
/// the Trace Context spec says (the request then starts a trace of its own).
fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[0..2])?;
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        0 => {}
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = hex(&v[3..35])?;
    let span_id = hex(&v[36..52])?;
    let flags = hex(&v[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Parent {
        trace_id: TraceId::from(trace_id),
        span_id: SpanId::from(span_id as u64),
        flags: TraceFlags::new(flags as u8 & TraceFlags::SAMPLED.to_u8()),
    })
}

/// Lowercase hex digits as a number (at most 32 of them).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

impl Parent {
    /// The parent as a remote span context in a fresh `Context`, with the
    /// request's `tracestate` (only read when the context is built).
    fn context<B>(self, request: &Request<B>) -> Context {
        let state = header(request.headers(), &TRACESTATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Context::new().with_remote_span_context(SpanContext::new(
            self.trace_id,
            self.span_id,
            self.flags,
            true,
            state,
        ))
    }
}

/// The span of a request being served.
#[derive(Debug)]
pub(crate) struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    /// The span's name so far: the method (`_OTHER` reads as `HTTP`).
    method: &'static str,
    route: Option<Cow<'static, str>>,
    class: Option<ErrorClass>,
}

/// Decides whether `request` is traced; if so, starts its span and puts its
/// context in the request's extensions. An unsampled request without a
/// parent costs one header lookup and one random draw; `addrs` is asked
/// only of a sampled one.
#[inline]
pub(crate) fn start<B>(
    tracer: &SdkTracer,
    sampler: &RootSampler,
    request: &mut Request<B>,
    secure: bool,
    addrs: impl FnOnce() -> Option<Addrs>,
) -> Option<Box<RequestSpan>> {
    let parent =
        header(request.headers(), &TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()));
    let decision = sampler.decide(parent);
    if decision == Decision::Drop {
        if let Some(mut p) = parent {
            // Not traced here, but the handler's outgoing calls carry the
            // trace on, marked "not sampled" (the parent's flag, or this
            // sampler's decision when it is not parent-based).
            p.flags = TraceFlags::default();
            let cx = p.context(request);
            request.extensions_mut().insert(cx);
        }
        return None;
    }
    let root_id = match decision {
        Decision::SampleRoot(id) => Some(id),
        _ => None,
    };
    Some(Box::new(start_sampled(
        tracer,
        request,
        parent,
        root_id,
        secure,
        addrs(),
    )))
}

#[cold]
fn start_sampled<B>(
    tracer: &SdkTracer,
    request: &mut Request<B>,
    parent: Option<Parent>,
    root_id: Option<TraceId>,
    secure: bool,
    addrs: Option<Addrs>,
) -> RequestSpan {
    let parent_cx = match parent {
        Some(p) => p.context(request),
        None => Context::new(),
    };
    let (method, known) = method_name(request.method());
    let mut attributes = Vec::with_capacity(11);
    attributes.push(KeyValue::new("http.request.method", method));
    if !known {
        attributes.push(KeyValue::new(
            "http.request.method_original",
            request.method().as_str().to_owned(),
        ));
    }
    let uri = request.uri();
    let scheme = match uri.scheme_str() {
        Some("https") => "https",
        Some(_) => "http",
        None if secure => "https",
        None => "http",
    };
    attributes.push(KeyValue::new("url.scheme", scheme));
    attributes.push(KeyValue::new("url.path", uri.path().to_owned()));
    if let Some(query) = uri.query() {
        attributes.push(KeyValue::new("url.query", redact_query(query)));
    }
    attributes.push(KeyValue::new(
        "network.protocol.version",
        protocol_version(request.version()),
    ));
    attributes.extend(connection_attributes(request.headers(), addrs));
    let name = if known { method } else { "HTTP" };
    DECIDED.set(root_id);
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent_cx);
    // Not left for another span when the SDK drew no id (shut down).
    DECIDED.take();
    let own = Context::new().with_remote_span_context(span.span_context().clone());
    request.extensions_mut().insert(own);
    RequestSpan {
        span,
        method: name,
        route: None,
        class: None,
    }
}

/// The attributes of the HTTP server span's conventions (1.29) that name
/// who asked and where: `client.address`, the peer's IP as the socket
/// gives it (a `Forwarded` or `X-Forwarded-For` header is not read: any
/// client can send one, and only the deployment knows which proxy to
/// trust), `server.port`, the local port the connection arrived on (the
/// conventions' fallback: a `Host` header's port is the client's word
/// too), and `user_agent.original`, the `User-Agent` header as sent (when
/// it is text).
fn connection_attributes(headers: &HeaderMap, addrs: Option<Addrs>) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(3);
    if let Some(addrs) = addrs {
        attributes.push(KeyValue::new(
            "client.address",
            addrs.peer.ip().to_canonical().to_string(),
        ));
        attributes.push(KeyValue::new("server.port", i64::from(addrs.local.port())));
    }
    if let Some(agent) = header(headers, &http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
    }
    attributes
}

/// The query keys whose values OpenTelemetry's HTTP conventions say to
/// redact by default (`url.query`, semantic conventions 1.29: signed-URL
/// credentials, valid for anyone who reads them while they last).
const REDACTED_QUERY_KEYS: [&str; 4] = ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

/// `query` with the values of [`REDACTED_QUERY_KEYS`] replaced by
/// `REDACTED`, as the conventions ask; other values are kept (the
/// conventions leave them to the application: a handler that puts secrets
/// in other keys should not be traced at `--otel-sample-ratio` above 0).
fn redact_query(query: &str) -> String {
    let secret = |pair: &str| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        pair.contains('=') && REDACTED_QUERY_KEYS.contains(&key)
    };
    if !query.split('&').any(secret) {
        return query.to_owned();
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if secret(pair) => {
                out.push_str(key);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// The method as the conventions name it, and whether it is a known one.
fn method_name(method: &Method) -> (&'static str, bool) {
    let known = match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => return ("_OTHER", false),
    };
    (known, true)
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

impl RequestSpan {
    /// Notes why the request ended badly; the first class noted wins (a
    /// panic that closes the connection is a panic, not a client gone).
    pub(crate) fn error(&mut self, class: ErrorClass) {
        self.class.get_or_insert(class);
    }

    /// Reads the route off the response's extensions.
    pub(crate) fn route(&mut self, extensions: &http::Extensions) {
        if let Some(route) = extensions.get::<super::HttpRoute>() {
            self.route = Some(route.0.clone());
            return;
        }
        #[cfg(feature = "axum")]
        if let Some(path) = extensions.get::<axum::extract::MatchedPath>() {
            self.route = Some(Cow::Owned(path.as_str().to_owned()));
        }
    }

    /// Ends the span: status, route, error class, then hands it to the export
    /// queue (`status` 0: no response was sent).
    pub(crate) fn end(self: Box<Self>, status: u16) {
        let RequestSpan {
            mut span,
            method,
            route,
            class,
        } = *self;
        if status != 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(route) = route {
            span.update_name(format!("{method} {route}"));
            span.set_attribute(KeyValue::new("http.route", route));
        }
        let (class, error_type): (&'static str, Option<Cow<'static, str>>) = match class {
            Some(ErrorClass::Timeout) => ("timeout", Some("timeout".into())),
            Some(ErrorClass::Panic) => ("panic", Some("panic".into())),
            Some(ErrorClass::ClientGone) => ("client_gone", Some("client_gone".into())),
            Some(ErrorClass::Shutdown) => ("shutdown", Some("shutdown".into())),
            None if status >= 500 => ("server_error", Some(status.to_string().into())),
            None if status >= 400 => ("client_error", None),
            None => ("", None),
        };
        if !class.is_empty() {
            span.set_attribute(KeyValue::new(ERROR_CLASS, class));
        }
        if let Some(error_type) = error_type {
            span.set_status(Status::error(error_type.clone()));
            span.set_attribute(KeyValue::new("error.type", error_type));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_url_credentials_are_redacted_in_url_query() {
        assert_eq!(redact_query("a=1&b=2"), "a=1&b=2");
        assert_eq!(
            redact_query("X-Goog-Signature=abc&x=1&sig=s3cr3t&Signature="),
            "X-Goog-Signature=REDACTED&x=1&sig=REDACTED&Signature=REDACTED"
        );
        assert_eq!(
            redact_query("AWSAccessKeyId=AKIA&&sig&signature=kept"),
            "AWSAccessKeyId=REDACTED&&sig&signature=kept",
            "a key without a value, and other cases of a key, are kept as they are"
        );
    }

    #[test]
    fn traceparent_valid_and_invalid() {
        let p =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            p.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(p.span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(p.flags.is_sampled());
        let p =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!p.flags.is_sampled());
        // A later version may append fields.
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_some());
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn header_lookup_scans_few_and_hashes_many() {
        for n in [0, 3, SCAN_HEADERS, 40] {
            let mut headers = HeaderMap::new();
            for i in 0..n {
                headers.insert(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            assert_eq!(header(&headers, &TRACEPARENT), None);
            headers.insert(TRACEPARENT.clone(), HeaderValue::from_static("tp"));
            assert_eq!(header(&headers, &TRACEPARENT).unwrap(), "tp", "{n} headers");
        }
    }

    /// A ratio of 1 samples every trace id and 0 none, the extremes
    /// included, as the SDK does.
    #[test]
    fn root_sampler_ratios() {
        let extremes = [TraceId::from(1u128), TraceId::from(u128::MAX)];
        for id in trace_ids(1000).chain(extremes) {
            assert!(RootSampler::new(1.0, true).samples(id), "{id}");
            assert!(!RootSampler::new(0.0, true).samples(id), "{id}");
            assert!(sdk_samples(1.0, id) && !sdk_samples(0.0, id));
        }
        let none = RootSampler::new(0.0, false);
        assert!((0..100).all(|_| none.decide(None) == Decision::Drop));
        let all = RootSampler::new(1.0, false);
        assert!((0..100).all(|_| all.decide(None) == Decision::Sample));
    }

    /// A sampled `traceparent` is followed by a parent-based sampler only:
    /// `always_off` traces nothing, `always_on` everything, whatever the
    /// parent says.
    #[test]
    fn only_a_parent_based_sampler_follows_the_parent() {
        let (_provider, tracer) = request_tracer();
        let traced = |sampler: RootSampler, flags: &'static str| {
            let mut request = with_parent(&format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
            ));
            let span = start(&tracer, &sampler, &mut request, false, || None);
            let cx = request.extensions().get::<Context>().cloned();
            let sampled = cx.map(|cx| cx.span().span_context().is_sampled());
            (span.is_some(), sampled)
        };
        // Parent-based: the parent's flag decides, and travels on.
        assert_eq!(
            traced(RootSampler::new(0.0, true), "01"),
            (true, Some(true))
        );
        assert_eq!(
            traced(RootSampler::new(1.0, true), "00"),
            (false, Some(false))
        );
        // Not: the ratio decides; an untraced request says so downstream.
        assert_eq!(
            traced(RootSampler::new(0.0, false), "01"),
            (false, Some(false))
        );
        assert_eq!(
            traced(RootSampler::new(1.0, false), "00"),
            (true, Some(true))
        );
    }

    /// `n` trace ids spread over the whole range, the same on every run
    /// (splitmix64 over a counter): a sampling test on them cannot flake.
    fn trace_ids(n: u64) -> impl Iterator<Item = TraceId> {
        (1..=n).map(|i| {
            let mix = |mut z: u64| {
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            };
            let seed = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            TraceId::from(u128::from(mix(seed)) << 64 | u128::from(mix(!seed)))
        })
    }

    /// What the SDK's `TraceIdRatioBased` sampler decides for `trace_id`.
    fn sdk_samples(ratio: f64, trace_id: TraceId) -> bool {
        use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
        let result = Sampler::TraceIdRatioBased(ratio).should_sample(
            None,
            trace_id,
            "x",
            &SpanKind::Server,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }

    /// A request with the `traceparent` `tp`.
    fn with_parent(tp: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .headers_mut()
            .insert(TRACEPARENT.clone(), HeaderValue::from_str(tp).unwrap());
        request
    }

    fn request_tracer() -> (opentelemetry_sdk::trace::SdkTracerProvider, SdkTracer) {
        use opentelemetry::trace::TracerProvider as _;
        let provider = requests_provider().build();
        let tracer = provider.tracer("test");
        (provider, tracer)
    }

    /// `traceidratio` (not parent-based) decides from the parent's trace id,
    /// as the SDK's `TraceIdRatioBased` does: the same id gets the same
    /// decision on every call (and in every process with the same ratio),
    /// and over many ids the share sampled is the ratio.
    #[test]
    fn a_ratio_sampler_decides_by_the_trace_id() {
        let (_provider, tracer) = request_tracer();
        for ratio in [0.1, 0.5, 0.9] {
            let sampler = RootSampler::new(ratio, false);
            let mut sampled = 0;
            let ids = 2_000;
            for trace_id in trace_ids(ids) {
                let want = sdk_samples(ratio, trace_id);
                for flags in ["01", "00", "01"] {
                    let tp = format!("00-{trace_id}-00f067aa0ba902b7-{flags}");
                    let span = start(&tracer, &sampler, &mut with_parent(&tp), false, || None);
                    assert_eq!(span.is_some(), want, "{ratio} {tp}");
                }
                sampled += usize::from(want);
            }
            let share = sampled as f64 / ids as f64;
            assert!((share - ratio).abs() < 0.03, "{ratio}: {share}");
        }
    }

    /// A request without a parent is sampled by the trace id its span gets,
    /// so a downstream `traceidratio` sampler with the same ratio keeps
    /// every trace started here (it used to draw apart from the id).
    #[test]
    fn a_root_is_sampled_by_the_trace_id_it_gets() {
        let (_provider, tracer) = request_tracer();
        for parent_based in [true, false] {
            let sampler = RootSampler::new(0.5, parent_based);
            let mut sampled = 0;
            for _ in 0..400 {
                let mut request = Request::new(());
                if let Some(span) = start(&tracer, &sampler, &mut request, false, || None) {
                    let trace_id = span.span.span_context().trace_id();
                    assert!(sdk_samples(0.5, trace_id), "{trace_id}");
                    sampled += 1;
                }
            }
            assert!(sampled > 0, "some of 400 roots are sampled at 0.5");
        }
    }
}
