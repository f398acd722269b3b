//! One request's span: the sampling decision (made before anything is
//! allocated), the W3C trace context read from the request, the attributes
//! of the HTTP semantic conventions, the error class, the end.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer};

use crate::observe::trace::ErrorClass;

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

/// Ratio sampling, parent-based or not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RootSampler {
    /// A request is sampled when a random `u64` is below this; `u64::MAX`
    /// means always (a ratio of 1 must not miss the one value equal to it).
    threshold: u64,
    /// A request with a parent follows the parent's flag (the
    /// `parentbased_*` samplers); when false the ratio decides for every
    /// request (`always_on`, `always_off`, `traceidratio`).
    parent_based: bool,
}

impl RootSampler {
    pub(crate) fn new(ratio: f64, parent_based: bool) -> RootSampler {
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else if ratio > 0.0 {
            (ratio * u64::MAX as f64) as u64
        } else {
            0
        };
        RootSampler {
            threshold,
            parent_based,
        }
    }

    /// Whether a request with `parent` (if any) is traced.
    #[inline]
    fn decide(&self, parent: Option<Parent>) -> bool {
        match parent {
            Some(p) if self.parent_based => p.flags.is_sampled(),
            _ => self.sample(),
        }
    }

    /// One random draw from the SDK's thread-local generator: no allocation,
    /// no lock.
    #[inline]
    fn sample(&self) -> bool {
        match self.threshold {
            u64::MAX => true,
            0 => false,
            t => u64::from_be_bytes(RandomIdGenerator::default().new_span_id().to_bytes()) < t,
        }
    }
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
/// parent costs one header lookup and one random draw.
#[inline]
pub(crate) fn start<B>(
    tracer: &SdkTracer,
    sampler: &RootSampler,
    request: &mut Request<B>,
    secure: bool,
) -> Option<Box<RequestSpan>> {
    let parent =
        header(request.headers(), &TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()));
    if !sampler.decide(parent) {
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
    Some(Box::new(start_sampled(tracer, request, parent, secure)))
}

#[cold]
fn start_sampled<B>(
    tracer: &SdkTracer,
    request: &mut Request<B>,
    parent: Option<Parent>,
    secure: bool,
) -> RequestSpan {
    let parent_cx = match parent {
        Some(p) => p.context(request),
        None => Context::new(),
    };
    let (method, known) = method_name(request.method());
    let mut attributes = Vec::with_capacity(8);
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
        attributes.push(KeyValue::new("url.query", query.to_owned()));
    }
    attributes.push(KeyValue::new(
        "network.protocol.version",
        protocol_version(request.version()),
    ));
    let name = if known { method } else { "HTTP" };
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent_cx);
    let own = Context::new().with_remote_span_context(span.span_context().clone());
    request.extensions_mut().insert(own);
    RequestSpan {
        span,
        method: name,
        route: None,
        class: None,
    }
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

    #[test]
    fn root_sampler_ratios() {
        assert!((0..1000).all(|_| RootSampler::new(1.0, true).sample()));
        assert!((0..1000).all(|_| !RootSampler::new(0.0, true).sample()));
        let half = RootSampler::new(0.5, true);
        let n = (0..10_000).filter(|_| half.sample()).count();
        // 10,000 fair draws land within 4,500..5,500 but for odds of ~1e-23.
        assert!((4_500..5_500).contains(&n), "{n}");
    }

    /// A sampled `traceparent` is followed by a parent-based sampler only:
    /// `always_off` traces nothing, `always_on` everything, whatever the
    /// parent says.
    #[test]
    fn only_a_parent_based_sampler_follows_the_parent() {
        use opentelemetry::trace::TracerProvider as _;
        // As Tracing's request provider: the decision is made before.
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .build();
        let tracer = provider.tracer("test");
        let traced = |sampler: RootSampler, flags: &'static str| {
            let mut request = Request::new(());
            let tp = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            request
                .headers_mut()
                .insert(TRACEPARENT.clone(), HeaderValue::from_str(&tp).unwrap());
            let span = start(&tracer, &sampler, &mut request, false);
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
}
