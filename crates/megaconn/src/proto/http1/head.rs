//! Request head parsing (the bytes of the usual heads read by
//! [`quick_head`](super::quick_head), every other head's by httparse, to the
//! same result) and the framing rules of RFC 9112 (ours): which body
//! follows, whether the connection stays open, and which malformed heads
//! get which status.
//!
//! A header section byte for byte the one the thread holds (one it took
//! before, [`HeadMemo`] says which) is not read again: what it said is
//! remembered, to the same result.
//!
//! The rules are strict on purpose. Ambiguous framing is how request smuggling
//! works, so anything two parsers could read differently is rejected and the
//! connection closed rather than guessed at.

use std::cell::Cell;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use crate::conn::config::{HeadLimits, MAX_HEADERS_CEILING};
use crate::observe::limits::LimitHit;
use crate::observe::metrics::{AccessLine, MethodLabel};

/// A parsed request head and what it says about the exchange.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub wants_upgrade: bool,
    /// `TE: trailers`: the client takes response trailers.
    pub te_trailers: bool,
}

/// Where a request head is parsed: in place, in the exchange's box, where
/// the exchange reads it and the request takes its method, target and
/// headers from it ([`HeadPlace::move_into`]).
///
/// Why: the head is 232 bytes, and returned by value it was copied whole
/// on each step of its way: out of `Framing::resolve`, through `build`'s
/// and `complete`'s `Result`s, into the exchange (a call to `memcpy`), into
/// the closure that fills the request, and into the request: eight copies
/// of the `Uri` and the `HeaderMap`, ~140 user-space instructions a request
/// (callgrind, bench/CPU-PER-REQUEST.md, session 42). Put here once, the
/// head is copied once more, into the request.
pub(crate) struct HeadPlace<'p> {
    /// The memory, in the caller's frame: a `MaybeUninit` of its own there
    /// is left as it is, where one inside this struct was zeroed whole
    /// when the place was made (232 bytes, ~16 instructions).
    head: &'p mut MaybeUninit<RequestHead>,
    /// `head` holds a head whose method, target and headers are its own:
    /// set by [`put`](Self::put), cleared when they are dropped or moved
    /// out. What drops them, so that they are dropped once.
    full: bool,
}

impl<'p> HeadPlace<'p> {
    /// An empty place in `head`.
    pub(crate) fn new(head: &'p mut MaybeUninit<RequestHead>) -> HeadPlace<'p> {
        HeadPlace { head, full: false }
    }

    /// Puts a head of these parts here, dropping the one here before (if
    /// any). Written field by field, where a `RequestHead` put together
    /// first was then copied here whole (a call to `memcpy`).
    #[inline(always)]
    fn put(
        &mut self,
        method: Method,
        uri: Uri,
        version: Version,
        headers: HeaderMap,
        resolved: Resolved,
    ) {
        self.clear();
        let head = self.head.as_mut_ptr();
        // SAFETY: `head` points to the place's memory, valid and aligned for
        // a `RequestHead`, and borrowed mutably by this place; each field
        // is written once, whole, so the head is whole after (`full`).
        unsafe {
            (&raw mut (*head).method).write(method);
            (&raw mut (*head).uri).write(uri);
            (&raw mut (*head).version).write(version);
            (&raw mut (*head).headers).write(headers);
            (&raw mut (*head).framing).write(resolved.framing);
            (&raw mut (*head).keep_alive).write(resolved.keep_alive);
            (&raw mut (*head).expect_continue).write(resolved.expect_continue);
            (&raw mut (*head).wants_upgrade).write(resolved.wants_upgrade);
            (&raw mut (*head).te_trailers).write(resolved.te_trailers);
        }
        self.full = true;
    }

    /// Drops the head here (if any): the place is empty after.
    fn clear(&mut self) {
        if std::mem::take(&mut self.full) {
            // SAFETY: `full` was set: `put` wrote a head, whose method,
            // target and headers nothing has moved out (`move_into` clears
            // `full`); `full` is now cleared, so it is dropped only here.
            unsafe { self.head.assume_init_drop() };
        }
    }

    /// The head here. Panics if there is none (the parse did not put one,
    /// or [`move_into`](Self::move_into) took its parts).
    #[inline]
    pub(crate) fn get(&self) -> &RequestHead {
        assert!(self.full, "no request head in its place");
        // SAFETY: `full`: `put` wrote a head here, whole.
        unsafe { self.head.assume_init_ref() }
    }

    /// Moves the head's method, target, version and headers into
    /// `request`, whose own are those of `Request::new` (no heap memory),
    /// and leaves the place empty.
    ///
    /// Copied from the place straight over the request's own, which own
    /// no heap memory (`GET`, a static `/`, an unallocated map) and so are
    /// overwritten rather than dropped: their drop glue, run for nothing,
    /// took ~80 user-space instructions a request (callgrind,
    /// bench/CPU-PER-REQUEST.md, session 37), and read out first (moved),
    /// the parts went through a copy on the stack.
    ///
    /// Unsafe rather than checked: a check that may panic here, between
    /// the request's making and the service's `call`, is a way out for
    /// the request (its drop, as the panic unwinds), and LLVM then builds
    /// it apart and copies it into `call`'s argument (64 user-space
    /// instructions a request; `service::call_into`, session 56).
    ///
    /// # Safety
    /// The place must be full: a parse put a head here ([`put`](Self::put),
    /// the parse answered `Ok(true)`), and nothing moved it out since.
    #[inline(always)]
    pub(crate) unsafe fn move_into<B>(&mut self, request: &mut http::Request<B>) {
        debug_assert!(self.full, "no request head in its place");
        // Cleared before the parts are moved, and nothing below panics (but
        // the debug checks, before any part is moved), so the place
        // neither drops them nor gives them out again.
        self.full = false;
        // What `Request::new` put there: `GET`, no scheme, no authority,
        // the path `/` and no query (`Uri::default()`: http 1.x's holds no
        // heap memory), an unallocated map. A `Request::new` that put
        // anything else there would leak it.
        debug_assert_eq!(*request.method(), Method::GET);
        debug_assert_eq!(*request.uri(), "/");
        debug_assert_eq!(request.headers().capacity(), 0);
        let head = self.head.as_ptr();
        // SAFETY: the place was full (the caller's contract): `put` wrote
        // every field of the head at `head`, and nothing moved the method,
        // the target or the headers out. They are copied once each, over
        // the request's own, which own no heap memory (checked above in
        // debug builds) and so need no drop; `full` is cleared, so the
        // place drops none of them: each is moved, not duplicated. The
        // place and the request are apart (the request is the caller's).
        unsafe {
            std::ptr::copy_nonoverlapping(&raw const (*head).method, request.method_mut(), 1);
            std::ptr::copy_nonoverlapping(&raw const (*head).uri, request.uri_mut(), 1);
            *request.version_mut() = (*head).version;
            std::ptr::copy_nonoverlapping(&raw const (*head).headers, request.headers_mut(), 1);
        }
    }

    /// The head here, taken out; `None` if there is none.
    #[cfg(test)]
    pub(crate) fn take(&mut self) -> Option<RequestHead> {
        // SAFETY: `full`: `put` wrote a head, whose parts are still its
        // own; `full` is cleared by the `take`, so it is read out once.
        std::mem::take(&mut self.full).then(|| unsafe { self.head.assume_init_read() })
    }
}

impl Drop for HeadPlace<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body (no Content-Length, no Transfer-Encoding, or Content-Length: 0).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request the server refuses, with the status to answer and a reason for
/// the log line and the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: StatusCode,
    pub reason: &'static str,
}

const fn reject(status: StatusCode, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

impl Rejection {
    /// Which limit (or check) refused the request, for the metric.
    pub(crate) fn limit(&self) -> LimitHit {
        match self.status {
            _ if *self == TOO_MANY_HEADERS => LimitHit::MaxHeaders,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => LimitHit::MaxHeaderBytes,
            StatusCode::PAYLOAD_TOO_LARGE => LimitHit::MaxBodyBytes,
            StatusCode::URI_TOO_LONG => LimitHit::UriTooLong,
            StatusCode::HTTP_VERSION_NOT_SUPPORTED => LimitHit::HttpVersion,
            _ => LimitHit::MalformedRequest,
        }
    }
}

/// More header fields than `max_headers` (httparse's array is that long).
const TOO_MANY_HEADERS: Rejection = reject(
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "more than max_headers request headers",
);

const BAD: StatusCode = StatusCode::BAD_REQUEST;

/// A request line too long to read (RFC 9112 §3: a server that receives a
/// request-target longer than any it wishes to parse MUST answer 414).
const URI_TOO_LONG: Rejection = reject(
    StatusCode::URI_TOO_LONG,
    "request line exceeds max_header_bytes",
);

/// A head past `max_header_bytes` whose request line did end within it.
const HEAD_TOO_LARGE: Rejection = reject(
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "request head exceeds max_header_bytes",
);

/// Where the request line of `buf` starts: httparse skips empty lines before
/// it (RFC 9112 §2.2), and so do we.
fn request_line_start(buf: &[u8]) -> usize {
    buf.iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len())
}

/// The answer to a head that reached `max_header_bytes`: 414 when its request
/// line has not ended within the limit (the target is what is too long), else
/// 431 (the header fields are).
fn over_limit(buf: &[u8], limit: usize) -> Rejection {
    let end = buf.len().min(limit);
    let start = request_line_start(&buf[..end]);
    if start < end && memchr::memchr(b'\n', &buf[start..end]).is_none() {
        URI_TOO_LONG
    } else {
        HEAD_TOO_LARGE
    }
}

/// A head [`find_end`] saw whole that httparse still finds incomplete. Not
/// known to happen (both end a head at the first empty line); if it does,
/// the two readers disagree on where the request ends, and a request framed
/// two ways is refused, as for smuggling, rather than read on.
pub(crate) const MALFORMED_HEAD: Rejection = reject(BAD, "malformed request head");

/// Where the request head at the start of `buf` ends (just past its empty
/// line), searching from `searched`; `searched` is moved past what was
/// searched, less the two bytes an empty line may have begun in, so that a
/// head read a byte at a time is scanned once, not once per read.
///
/// A line ends with LF or CRLF, so the head ends at the first LF followed by
/// LF or CRLF: where httparse stops, which [`parse_from`] checks.
///
/// The LFs are looked for eight bytes a step, in a word, not by `memchr`:
/// a usual head is a few dozen bytes and two or three lines, and a call to
/// `memchr` per line (its dispatch, its set-up for a short slice) took ~45
/// user-space instructions each, ~100 a request (callgrind,
/// bench/CPU-PER-REQUEST.md, session 42). `the_end_is_found_where_memchr_finds_it`
/// holds it to the search by `memchr` it replaced.
pub(crate) fn find_end(buf: &[u8], searched: &mut usize) -> Option<usize> {
    /// The end of the head if the byte at `lf` is an LF that ends it.
    #[inline(always)]
    fn ends_at(buf: &[u8], lf: usize) -> Option<usize> {
        match (buf.get(lf), buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), Some(b'\n'), _) => Some(lf + 2),
            (Some(b'\n'), Some(b'\r'), Some(b'\n')) => Some(lf + 3),
            _ => None,
        }
    }
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LFS: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut at = (*searched).min(buf.len());
    while let Some(&word) = buf.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
        // A byte of `x` is zero where the word has an LF. `(x - ONES) & !x
        // & HIGHS` sets the high bit of each zero byte, and maybe of a
        // byte above one (the borrow runs on), never below the first: the
        // candidates are taken from the lowest up, each checked by
        // `ends_at`, which reads the byte itself.
        let x = u64::from_le_bytes(word) ^ LFS;
        let mut lfs = x.wrapping_sub(ONES) & !x & HIGHS;
        while lfs != 0 {
            let end = ends_at(buf, at + (lfs.trailing_zeros() / 8) as usize);
            if end.is_some() {
                return end;
            }
            lfs &= lfs - 1;
        }
        at += 8;
    }
    while at < buf.len() {
        let end = ends_at(buf, at);
        if end.is_some() {
            return end;
        }
        at += 1;
    }
    *searched = buf.len().saturating_sub(2);
    None
}

/// The metrics label of a refused request's method and, with the access log
/// `on`, its access-log line, read from the head at the start of `buf`
/// (where a refusal leaves it).
///
/// The label is the method's own when httparse reads the head whole within
/// the limits (a body over `max_body_bytes` by its Content-Length, a bad
/// framing header), else [`MethodLabel::UNREAD`], since a head too long,
/// with too many fields or a malformed line gives no method to trust. The
/// log line says what came rather than counts it: it names the method and
/// the path as far as httparse read the request line before it stopped (a
/// 431's line is whole, a 414's is not), `-` for what it did not reach, as
/// nginx logs the requests it refuses. A refusal closes the connection, so
/// the head is parsed twice only then.
pub(crate) fn refused(
    buf: &[u8],
    limits: &HeadLimits,
    on: bool,
) -> (MethodLabel, Option<Box<AccessLine>>) {
    let mut storage: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS_CEILING] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS_CEILING];
    let headers = &mut storage[..limits.max_headers.min(MAX_HEADERS_CEILING)];
    let mut req = httparse::Request::new(&mut []);
    let buf = &buf[..buf.len().min(limits.max_header_bytes)];
    let parsed =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, headers);
    // httparse fills the method, then the target, as it reads them.
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let label = match (parsed, &method) {
        (Ok(httparse::Status::Complete(_)), Some(method)) => MethodLabel::of(method),
        _ => MethodLabel::UNREAD,
    };
    let access = on.then(|| AccessLine::partial(method, req.path.map(target_path)));
    (label, access)
}

/// A request target's path as the access log names it (a served request's
/// is its `Uri`'s path), or the target as sent when it is not a `Uri`.
fn target_path(target: &str) -> String {
    match target.parse::<Uri>() {
        Ok(uri) => uri.path().to_owned(),
        Err(_) => target.to_owned(),
    }
}

/// What the connection found of the end of the request head at the start
/// of its read buffer: how [`parse_from`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Just past its empty line, at this offset ([`find_end`]).
    At(usize),
    /// Not searched for: the buffer ends with an empty line (`\r\n\r\n`),
    /// so a head ends there or before (the first LF followed by CRLF or LF
    /// is at the latest the one before that last CRLF), and the parse
    /// finds where as it reads it.
    InBuffer,
    /// None within `max_header_bytes` of buffer: the parse refuses the head.
    Missing,
}

#[cfg(test)]
impl End {
    /// The end [`find_end`] found, or none within the limit.
    pub(crate) fn found(end: Option<usize>) -> End {
        end.map_or(End::Missing, End::At)
    }
}

/// Parses the request head at the start of `rbuf` into `place` and takes
/// it out of the buffer; `end`: where it ends, as the connection found it.
/// `true`: the head is in `place`; `false`: the head is not whole (nothing
/// put).
///
/// A head found whole (the usual case) is split off the read buffer and
/// frozen, and the target and every header value are slices of it, as in
/// hyper: no copy and no allocation per request (a copy took two: the copy,
/// and the shared control block made when it was first sliced). The price:
/// a handler that keeps a header value past its request keeps the whole
/// read buffer's allocation alive with it, and the connection reads into a
/// fresh one. Anything else (an incomplete head, a rejection, a head that
/// ends elsewhere than `end` says) goes through [`parse`], bytes left in
/// place, so the answer is the same either way.
///
/// A buffer that ends with an empty line ([`End::InBuffer`], the usual
/// read: one request, or several pipelined) is read by [`quick_from`]
/// first, which finds the head's end as it reads it: searched for first
/// ([`find_end`], 129 user-space instructions a request), every byte of
/// the head was scanned twice; the head's share of a request went from
/// 957 to 851 (callgrind, bench/CPU-PER-REQUEST.md, session 50). A head
/// it does not read is searched for and read as before. So is a head whose
/// end the connection found ([`End::At`]: a read that ends in a body, or
/// in part of a pipelined head), so that it too is made from [`HeadMemo`]
/// when its section is the one held.
pub(crate) fn parse_from(
    rbuf: &mut BytesMut,
    end: End,
    limits: &HeadLimits,
    place: &mut HeadPlace<'_>,
) -> Result<bool, Rejection> {
    let end = match end {
        End::At(_) | End::InBuffer if quick_from(rbuf, limits, place) => return Ok(true),
        End::At(end) => Some(end),
        End::Missing => None,
        End::InBuffer => find_end(rbuf, &mut 0),
    };
    if let Some(end) = end.filter(|end| *end <= limits.max_header_bytes) {
        let shared = rbuf.split_to(end).freeze();
        let mut len = 0;
        let parsed = parse_in(&shared, Some(&shared), limits, &mut len, place);
        if len == end && parsed == Ok(true) {
            return parsed;
        }
        put_back(rbuf, shared, place);
    }
    let mut len = 0;
    let parsed = parse_in(rbuf, None, limits, &mut len, place)?;
    if parsed {
        rbuf.advance(len);
    }
    Ok(parsed)
}

/// Reads the usual head ([`quick_head`](super::quick_head)) at the start
/// of `rbuf` where it lies, and only then splits it off the buffer, where
/// it ends: the same head, sliced the same way, as [`parse_from`] gives
/// for the end [`find_end`] finds (a head `quick_head` reads has no LF but
/// its lines' CRLFs, so its end is the first empty line's, as there). A
/// head it does not read, one longer than `max_header_bytes` and one the
/// rules refuse are left in the buffer as they came (`false`), for
/// `parse_from` to read as it reads any other.
///
/// A header section byte for byte the one [`HeadMemo`] holds is not read
/// again: its fields and what they say are the memo's.
#[inline(always)]
fn quick_from(rbuf: &mut BytesMut, limits: &HeadLimits, place: &mut HeadPlace<'_>) -> bool {
    // `try_with`, `try_borrow_mut`: a head parsed while the thread's locals
    // are being destroyed is read as any other head (`false`: by
    // `parse_from`'s own way), to the same result.
    HEAD_MEMO
        .try_with(|memo| match memo.try_borrow_mut() {
            Ok(mut memo) => quick_from_in(rbuf, limits, place, &mut memo),
            Err(_) => false,
        })
        .unwrap_or(false)
}

/// [`quick_from`], with the thread's memo.
#[inline(always)]
fn quick_from_in(
    rbuf: &mut BytesMut,
    limits: &HeadLimits,
    place: &mut HeadPlace<'_>,
    memo: &mut HeadMemo,
) -> bool {
    let mut storage: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS_CEILING] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS_CEILING];
    let headers = &mut storage[..limits.max_headers.min(MAX_HEADERS_CEILING)];
    // SAFETY: the buffer's bytes, read through their address so that the
    // head can be split off the buffer while the parse's slices of it are
    // held. They stay where they are and as they are while `buf` is used:
    // `split_to` moves no byte (the head's part, frozen into `shared`,
    // keeps its memory, and the slices, within it, are mapped onto it by
    // the `Slicer`), and nothing writes to either part before the slices
    // are dropped, at the latest when `put_back` (whose copy ends their
    // use) replaces the buffer.
    let buf: &[u8] = unsafe { std::slice::from_raw_parts(rbuf.as_ptr(), rbuf.len()) };
    let Some(line) = super::quick_head::request_line(buf) else {
        return false;
    };
    let remembered = memo.holds(buf, &line, limits);
    if remembered {
        memo.note_hit();
    }
    let (fields, len) = if remembered {
        (0, line.end + memo.len)
    } else {
        match super::quick_head::header_lines(buf, line.end, headers) {
            Some(read) => read,
            None => return false,
        }
    };
    if len > limits.max_header_bytes {
        return false;
    }
    debug_assert_eq!(find_end(buf, &mut 0), Some(len));
    let shared = rbuf.split_to(len).freeze();
    debug_assert_eq!(shared.as_ptr(), buf.as_ptr());
    let slicer = Slicer {
        shared: &shared,
        base: buf.as_ptr(),
    };
    let built = if remembered {
        memo.put_head(&line, &slicer, place)
    } else {
        let req = super::quick_head::Quick {
            method: line.method,
            path: line.path,
            version: line.version,
            headers: fields,
            len,
        };
        // SAFETY: `header_lines` wrote the first `fields` slots of
        // `headers`, as `quick_head::parse` does for the `Quick` it gives.
        let req = unsafe { req.request(headers) };
        // Held if the rules take it, it may be (see `HeadMemo`) and it is
        // its turn (`missed`): its parse notes its fields' names.
        let holdable = memorable(&line) && len - line.end <= MEMO_BYTES && fields <= MEMO_FIELDS;
        let names = memo.missed(holdable);
        let held = names.is_some();
        let built = build(&req, &slicer, limits, place, names);
        if built.is_ok() && held {
            memo.remember(buf, &line, len, req.headers, limits, place.get());
        }
        built
    };
    if built.is_ok() {
        return true;
    }
    put_back(rbuf, shared, place);
    false
}

/// The longest header section [`HeadMemo`] holds.
const MEMO_BYTES: usize = 512;

/// The most header fields [`HeadMemo`] holds.
const MEMO_FIELDS: usize = 16;

/// A header section of the usual shape (`quick_head`'s) this thread read
/// whole and took (the last one, unless the ones after it missed fewer
/// times in a row than the patience below): its bytes, and what the head was made of
/// them (each field's name and where its value lies; the framing and the
/// other facts [`Framing::resolve`] drew from them).
///
/// Why: a client sends the same header section request after request (a
/// keep-alive client, a load balancer's health check, a heartbeat: only
/// the target changes, if anything), and reading it again (each line's
/// scan, each name's lookup, the `Host` check, the framing rules) gives
/// the same answer every time. A section byte for byte the one held here,
/// after a request line of the same version, is not read: the head gets
/// the memo's fields, their values sliced from where they lie in the new
/// head, and the memo's framing: 243 to 249 user-space instructions fewer
/// a request for the demo's `GET /` with its one `Host` (callgrind,
/// bench/CPU-PER-REQUEST.md, session 51).
///
/// The answer is the same: what the section's reading gives depends on
/// its bytes alone (`quick_head::header_lines`), and what the rules draw
/// from them on those fields, the version, `max_body_bytes` (a
/// `Content-Length` over it is refused) and `max_headers` (more fields
/// than it are httparse's to refuse), each compared, and on the method and
/// the target in two cases only, which are never held here: `CONNECT`
/// (an upgrade) and a target not in origin form (an absolute-form
/// target's authority replaces the `Host`). Only a section that was read
/// and taken is held, so one the rules refuse is always read, and refused,
/// again. The request line, the target and the method are read every time.
///
/// A section that differs (a miss) is compared from its end, where the
/// fields that change from request to request usually are (a
/// `traceparent`, a cookie, a `Content-Length`), and does not replace the
/// one held at once: only the [`patience`](Self::patience)th miss in a row
/// does, and a held section replaced without a hit doubles the patience
/// (up to [`MAX_PATIENCE`]; a hit sets it back to [`MIN_PATIENCE`]). Why: holding a section costs a copy of its
/// bytes and a clone of each name (a custom name's first clone allocates:
/// `Bytes`' promotion), and in session 51's rule (each miss replaced the
/// section held) a client whose section changed every request paid that
/// every request, and two clients taking turns on a worker each emptied
/// the memo for the other, so neither was ever served from it: +738 and
/// +450 to +650 user-space instructions a request over no memo at all,
/// where this rule pays +73 for the first and saves 610 to 650 for the
/// second (callgrind, bench/CPU-PER-REQUEST.md, session 52). A section held is still taken
/// after two misses in a row when the one before it was hit (a client
/// that moved on), and at once when nothing is held. A section it cannot
/// hold (too long, too many fields, `CONNECT`, a target not in origin
/// form) lets go of the one held, as in session 51.
struct HeadMemo {
    /// The section: its header lines and the empty line that ends it.
    bytes: [u8; MEMO_BYTES],
    /// Its length; 0 while nothing is held.
    len: usize,
    /// The minor version of the request line it followed.
    version: u8,
    /// The `max_body_bytes` its framing was checked against.
    max_body_bytes: u64,
    /// Each field's name, in the order the fields came.
    names: Vec<HeaderName>,
    /// Each field's value: where it starts and ends in `bytes`.
    values: [(u16, u16); MEMO_FIELDS],
    /// What the rules drew from the head.
    resolved: Resolved,
    /// Misses in a row (sections it could hold) since the one held was
    /// hit or held.
    misses: u8,
    /// The misses in a row that replace the section held:
    /// [`MIN_PATIENCE`] to [`MAX_PATIENCE`].
    patience: u8,
    /// The section held was hit since it was held.
    hit: bool,
}

/// The misses in a row that replace a held section that was hit (a client
/// that moved on to another section), and the least patience.
const MIN_PATIENCE: u8 = 2;

/// The most misses in a row it takes to replace the held section: where
/// the doubling stops, so that a worker whose sections changed for a
/// while takes a section that repeats again within 64 requests.
const MAX_PATIENCE: u8 = 64;

thread_local! {
    static HEAD_MEMO: std::cell::RefCell<HeadMemo> = const {
        std::cell::RefCell::new(HeadMemo {
            bytes: [0; MEMO_BYTES],
            len: 0,
            version: 0,
            max_body_bytes: 0,
            names: Vec::new(),
            values: [(0, 0); MEMO_FIELDS],
            resolved: Resolved {
                framing: BodyFraming::None,
                keep_alive: false,
                expect_continue: false,
                wants_upgrade: false,
                te_trailers: false,
            },
            misses: 0,
            patience: MIN_PATIENCE,
            hit: false,
        })
    };
}

impl HeadMemo {
    /// Whether the header section after `line` in `buf` is the one held
    /// here, and what it says holds for this request (see the type's doc).
    #[inline(always)]
    fn holds(&self, buf: &[u8], line: &super::quick_head::Line<'_>, limits: &HeadLimits) -> bool {
        let n = self.len;
        n != 0
            && self.version == line.version
            && self.max_body_bytes == limits.max_body_bytes
            && self.names.len() <= limits.max_headers.min(MAX_HEADERS_CEILING)
            && memorable(line)
            && buf
                .get(line.end..line.end + n)
                .is_some_and(|section| same_section(section, &self.bytes[..n]))
    }

    /// Notes that the section held was the request's (a hit): sections
    /// repeat here, so the next one to miss twice in a row is taken.
    #[inline(always)]
    fn note_hit(&mut self) {
        self.misses = 0;
        self.hit = true;
        self.patience = MIN_PATIENCE;
    }

    /// The head of `line` and the section held here, put in `place`: the
    /// method and the target read, the fields the memo's, their values
    /// sliced from `slicer`'s head, where they lie after `line` as in the
    /// section held.
    #[inline(always)]
    fn put_head(
        &self,
        line: &super::quick_head::Line<'_>,
        slicer: &Slicer<'_>,
        place: &mut HeadPlace<'_>,
    ) -> Result<(), Rejection> {
        let (method, uri, version) = line_parts(line.method, line.path, line.version, slicer)?;
        let mut headers = super::header_maps::take(self.names.len());
        for (name, &(start, end)) in self.names.iter().zip(&self.values) {
            let value = slicer
                .shared
                .slice(line.end + usize::from(start)..line.end + usize::from(end));
            headers.append(name.clone(), header_value(value));
        }
        place.put(method, uri, version, headers, self.resolved);
        Ok(())
    }

    /// A head read now, whose section is not the one held (a miss), and
    /// which this memo could hold (`holdable`, see the type's doc) or not:
    /// where its parse is to note its fields' names if it is to be held
    /// ([`remember`](Self::remember)): when nothing is held, or this is
    /// the [`patience`](Self::patience)th miss in a row. `None`: the
    /// section held is kept (or, when `holdable` is not, let go).
    #[inline(always)]
    fn missed(&mut self, holdable: bool) -> Option<&mut Vec<HeaderName>> {
        if !holdable {
            self.forget();
            return None;
        }
        if self.len != 0 {
            self.misses += 1;
            if self.misses < self.patience {
                return None;
            }
            // A section held and never hit was not worth its copy: wait
            // longer before the next. (A hit set the patience back to
            // `MIN_PATIENCE`.)
            if !self.hit {
                self.patience = self.patience.saturating_mul(2).min(MAX_PATIENCE);
            }
        }
        self.forget();
        Some(&mut self.names)
    }

    /// Lets go of what is held.
    #[inline(always)]
    fn forget(&mut self) {
        self.len = 0;
        self.misses = 0;
        self.hit = false;
        self.names.clear();
    }

    /// Holds the section after `line` of the head at the start of `buf`,
    /// `len` bytes long, whose fields are `fields` (their names noted by
    /// its parse since [`missed`](Self::missed)), and what the rules drew
    /// from the head made of it, `head`. Out of line, so that its calls
    /// count the memo's copies (bench/lower-bound.sh's `HEADERS`).
    #[cold]
    #[inline(never)]
    fn remember(
        &mut self,
        buf: &[u8],
        line: &super::quick_head::Line<'_>,
        len: usize,
        fields: &[httparse::Header<'_>],
        limits: &HeadLimits,
        head: &RequestHead,
    ) {
        debug_assert_eq!(self.names.len(), fields.len());
        let section = &buf[line.end..len];
        debug_assert!(section.len() <= MEMO_BYTES && fields.len() <= MEMO_FIELDS);
        debug_assert!(section.ends_with(b"\r\n"));
        for (slot, field) in self.values.iter_mut().zip(fields) {
            // Every value is a slice of the section (`header_lines`').
            let start = field.value.as_ptr() as usize - section.as_ptr() as usize;
            *slot = (start as u16, (start + field.value.len()) as u16);
        }
        self.bytes[..section.len()].copy_from_slice(section);
        self.len = section.len();
        self.version = line.version;
        self.max_body_bytes = limits.max_body_bytes;
        self.resolved = Resolved {
            framing: head.framing,
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            wants_upgrade: head.wants_upgrade,
            te_trailers: head.te_trailers,
        };
    }
}

/// The length of the header section this thread's [`HeadMemo`] holds (0:
/// none), for the tests to see that it held one.
#[cfg(test)]
pub(crate) fn memo_len() -> usize {
    HEAD_MEMO.with(|memo| memo.borrow().len)
}

/// The header section this thread's [`HeadMemo`] holds (empty: none) and
/// the misses in a row that would replace it, for the tests to follow
/// which section is held and its patience.
#[cfg(test)]
pub(crate) fn memo_held() -> (Vec<u8>, u8) {
    HEAD_MEMO.with(|memo| {
        let memo = memo.borrow();
        (memo.bytes[..memo.len].to_vec(), memo.patience)
    })
}

/// Whether `a` and `b`, of the same length, hold the same bytes: their
/// last eight first, then the whole. A section's last fields are the ones
/// that usually change ([`HeadMemo`]: a `traceparent`'s span, a cookie),
/// so a miss is usually told in that one word; a hit, which reads every
/// byte anyway, is read by `==` when long (libc's `bcmp`, a vector
/// compare: for the 138-byte section of `bench/head_pattern_client.py`
/// cheaper than eight bytes a step from the end, 139 instructions, session
/// 52), eight bytes a step when short ([`same_bytes`]: a one-`Host`
/// section, where `bcmp`'s dispatch and set-up cost more than the compare).
#[inline(always)]
fn same_section(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    if a.len() < 8 || a.len() != b.len() {
        return a == b;
    }
    let last = |s: &[u8]| u64::from_ne_bytes(*s.last_chunk::<8>().expect("eight bytes"));
    last(a) == last(b)
        && if a.len() <= SHORT_SECTION {
            same_bytes(a, b)
        } else {
            a == b
        }
}

/// The longest section [`same_section`] compares a word at a time.
const SHORT_SECTION: usize = 48;

#[cfg(test)]
#[path = "same_section_tests.rs"]
mod same_section_tests;

/// Whether a head of this request line may be made from [`HeadMemo`]:
/// not `CONNECT`, and a target in origin form (see the memo's doc).
#[inline(always)]
fn memorable(line: &super::quick_head::Line<'_>) -> bool {
    line.method != "CONNECT" && line.path.starts_with('/')
}

/// A head split off `rbuf` (`shared`) that is not taken after all, put
/// back in front of what followed it, where a refusal reads it (its log
/// line, and whether it was HTTP/2's preface). The head in `place`, if
/// any, is dropped first: it may hold slices of those bytes.
#[cold]
fn put_back(rbuf: &mut BytesMut, shared: Bytes, place: &mut HeadPlace<'_>) {
    place.clear();
    // A copy, on this rare path: the rest of the buffer still shares the
    // allocation with `shared`.
    let mut whole = BytesMut::with_capacity(shared.len() + rbuf.len());
    whole.extend_from_slice(&shared);
    whole.extend_from_slice(rbuf);
    *rbuf = whole;
}

/// [`parse_from`], the head returned (the tests' way in).
#[cfg(test)]
pub(crate) fn parsed_from(
    rbuf: &mut BytesMut,
    end: End,
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, Rejection> {
    let mut slot = MaybeUninit::uninit();
    let mut place = HeadPlace::new(&mut slot);
    parse_from(rbuf, end, limits, &mut place)?;
    Ok(place.take())
}

/// Parses a request head from the start of `buf`, copying what the head
/// keeps (see [`parse_from`] for the reading path, which does not copy).
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((head, len)))` when
/// the head is complete and took `len` bytes. (The server reads through
/// [`parse_from`]; this is the tests' way in.)
#[cfg(test)]
pub(crate) fn parse(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, Rejection> {
    let mut len = 0;
    let mut slot = MaybeUninit::uninit();
    let mut place = HeadPlace::new(&mut slot);
    parse_in(buf, None, limits, &mut len, &mut place)?;
    Ok(place.take().map(|head| (head, len)))
}

/// [`parse`], into `place`, with the target and header values sliced from
/// `shared` when given (`buf` is then `shared`'s bytes), else from one copy
/// of the head; a whole head's length is put in `len`. `true`: the head is
/// in `place`; `false`: more bytes are needed.
fn parse_in(
    buf: &[u8],
    shared: Option<&Bytes>,
    limits: &HeadLimits,
    len: &mut usize,
    place: &mut HeadPlace<'_>,
) -> Result<bool, Rejection> {
    let mut storage: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS_CEILING] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS_CEILING];
    let headers = &mut storage[..limits.max_headers.min(MAX_HEADERS_CEILING)];
    // The usual head is read without httparse, to the same result
    // (`quick_head`); `max_header_bytes` is checked below either way.
    if let Some(quick) = super::quick_head::parse(buf, headers) {
        // SAFETY: `quick` is what `quick_head::parse` gave for `headers`.
        let req = unsafe { quick.request(headers) };
        *len = quick.len;
        return complete(buf, &req, quick.len, shared, limits, place);
    }
    let mut req = httparse::Request::new(&mut []);
    let status = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, headers)
    {
        Ok(status) => status,
        // httparse knows HTTP/1.0 and HTTP/1.1 only; what else it stopped at is
        // either a malformed request line (400), another major version (505) or
        // a later HTTP/1 minor version, served as HTTP/1.1 (RFC 9110 §2.5).
        Err(httparse::Error::Version) => {
            return match other_version(buf, limits)? {
                None => Ok(false),
                Some(minor_at) => {
                    let mut rewritten = buf[..buf.len().min(limits.max_header_bytes)].to_vec();
                    rewritten[minor_at] = b'1';
                    parse_in(&rewritten, None, limits, len, place)
                }
            };
        }
        Err(e) => return Err(parse_error(e, buf)),
    };
    *len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= limits.max_header_bytes => {
            return Err(over_limit(buf, limits.max_header_bytes))
        }
        httparse::Status::Partial => return Ok(false),
    };
    complete(buf, &req, *len, shared, limits, place)
}

/// The head httparse (or `quick_head`) read whole from `buf` as `req`,
/// `len` bytes long, built into a [`RequestHead`] in `place` (see
/// [`parse_in`]); `Ok(true)`.
fn complete(
    buf: &[u8],
    req: &httparse::Request<'_, '_>,
    len: usize,
    shared: Option<&Bytes>,
    limits: &HeadLimits,
    place: &mut HeadPlace<'_>,
) -> Result<bool, Rejection> {
    if len > limits.max_header_bytes {
        return Err(over_limit(buf, limits.max_header_bytes));
    }
    // Otherwise one copy of the head; the target and every header value are
    // slices of it (one allocation per request instead of one per header).
    let copy;
    let shared = match shared {
        Some(shared) => shared,
        None => {
            copy = Bytes::copy_from_slice(&buf[..len]);
            &copy
        }
    };
    build(
        req,
        &Slicer {
            shared,
            base: buf.as_ptr(),
        },
        limits,
        place,
        None,
    )?;
    Ok(true)
}

/// Maps slices of the parse buffer onto the shared bytes of the head.
struct Slicer<'a> {
    shared: &'a Bytes,
    base: *const u8,
}

impl Slicer<'_> {
    fn of(&self, part: &[u8]) -> Bytes {
        let offset = (part.as_ptr() as usize).wrapping_sub(self.base as usize);
        match offset.checked_add(part.len()) {
            Some(end) if !part.is_empty() && end <= self.shared.len() => {
                self.shared.slice(offset..end)
            }
            _ => Bytes::copy_from_slice(part),
        }
    }
}

/// Reads the request line httparse refused at the version:
/// `method SP request-target SP HTTP-version`, with `HTTP-version =
/// "HTTP/" DIGIT "." DIGIT` (RFC 9112 §2.3, §3). Returns where the minor digit
/// of an `HTTP/1.x` version is, `None` while the line is incomplete; anything
/// else is malformed (400), and a well-formed version with another major number
/// is not supported (505).
///
/// The h2c prior-knowledge preface (`PRI * HTTP/2.0`) ends up as the 505
/// rejection, which the connection checks for the preface before answering.
fn other_version(buf: &[u8], limits: &HeadLimits) -> Result<Option<usize>, Rejection> {
    let start = request_line_start(buf);
    let window = &buf[start.min(limits.max_header_bytes)..buf.len().min(limits.max_header_bytes)];
    let Some(lf) = window.iter().position(|b| *b == b'\n') else {
        if buf.len() >= limits.max_header_bytes {
            return Err(over_limit(buf, limits.max_header_bytes));
        }
        return Ok(None);
    };
    let line = window[..lf].strip_suffix(b"\r").unwrap_or(&window[..lf]);
    let mut parts = line.split(|b| *b == b' ');
    // The method and the target are not empty here: httparse stops at the
    // version only after a method token and a target of a byte or more,
    // each followed by one SP (it refuses an empty one as `Token`), from
    // the line `request_line_start` finds (`request_line_versions` holds
    // httparse to that).
    let (Some(_method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject(BAD, "malformed request line"));
    };
    match *version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if major == b'1' {
                Ok(Some(start + line.len() - 1))
            } else {
                Err(reject(
                    StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    "unsupported HTTP version (HTTP/1.x is served here)",
                ))
            }
        }
        _ => Err(reject(BAD, "malformed HTTP version")),
    }
}

/// The answer to a head httparse refused with `e`, `buf` being the head.
fn parse_error(e: httparse::Error, buf: &[u8]) -> Rejection {
    match e {
        httparse::Error::TooManyHeaders => TOO_MANY_HEADERS,
        httparse::Error::Version => reject(BAD, "malformed HTTP version"),
        httparse::Error::HeaderName => reject(BAD, "invalid header name"),
        httparse::Error::HeaderValue => reject(BAD, "invalid header value"),
        httparse::Error::NewLine => reject(BAD, "invalid line ending"),
        // httparse says `Token` for a bad byte in the method or in the
        // request target: which one, the line says (a client told "method
        // or token" for a space in its path looked at the wrong part).
        httparse::Error::Token if method_is_token(buf) => reject(BAD, "invalid request target"),
        httparse::Error::Token => reject(BAD, "invalid method"),
        httparse::Error::Status => reject(BAD, "invalid request line"),
    }
}

/// Whether the request line in `buf` begins with a whole method, a token
/// (RFC 9110 §9.1) followed by its space: then what httparse refused as
/// no token is the request target.
fn method_is_token(buf: &[u8]) -> bool {
    let line = &buf[request_line_start(buf)..];
    let method_len = line
        .iter()
        .take_while(|&&b| super::quick_head::is_tchar(b))
        .count();
    method_len > 0 && line.get(method_len) == Some(&b' ')
}

/// The head `req` says, put in `place` (built there: see [`HeadPlace`]).
///
/// `names`: where each field's name is noted as it is read, in order (for
/// [`HeadMemo`]).
fn build(
    req: &httparse::Request<'_, '_>,
    slicer: &Slicer<'_>,
    limits: &HeadLimits,
    place: &mut HeadPlace<'_>,
    mut names: Option<&mut Vec<HeaderName>>,
) -> Result<(), Rejection> {
    let (method, uri, version) = line_parts(
        req.method.unwrap_or_default(),
        req.path.unwrap_or_default(),
        req.version.unwrap_or(1),
        slicer,
    )?;
    let mut headers = super::header_maps::take(req.headers.len());
    let mut framing = Framing::default();
    for h in req.headers.iter() {
        let name = header_name(h.name.as_bytes())?;
        let value = header_value(slicer.of(h.value));
        framing.observe(&name, h.value)?;
        if let Some(names) = names.as_deref_mut() {
            names.push(name.clone());
        }
        headers.append(name, value);
    }
    let resolved = framing.resolve(&method, &uri, version, &mut headers, limits)?;
    place.put(method, uri, version, headers, resolved);
    Ok(())
}

/// The method, the target and the version of a request line (`minor`: its
/// version's minor digit).
#[inline(always)]
fn line_parts(
    raw_method: &str,
    target: &str,
    minor: u8,
    slicer: &Slicer<'_>,
) -> Result<(Method, Uri, Version), Rejection> {
    let method = method(raw_method)?;
    let uri = parse_target(&method, target, slicer)?;
    let version = match minor {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    Ok((method, uri, version))
}

/// What the framing headers, with the rest of the head, say of the
/// exchange ([`Framing::resolve`]).
#[derive(Debug, Clone, Copy)]
struct Resolved {
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    wants_upgrade: bool,
    te_trailers: bool,
}

/// The request's method. `GET`, which nearly every request has, is known at
/// once: `Method::from_bytes` gives the same `Method::GET`, through a call
/// and its `Result` (~30 user-space instructions a request; callgrind,
/// bench/CPU-PER-REQUEST.md, session 41).
fn method(raw: &str) -> Result<Method, Rejection> {
    if raw == "GET" {
        return Ok(Method::GET);
    }
    Method::from_bytes(raw.as_bytes()).map_err(|_| reject(BAD, "invalid method"))
}

/// A request header's value, from bytes httparse has checked already.
///
/// httparse accepts exactly the bytes `HeaderValue` does in a field value
/// (HTAB, SP to `~`, and obs-text from 0x80), and refuses the head
/// otherwise, so checking them again would only repeat its work: ~4
/// instructions a byte, ~80 for a usual `Host` (callgrind,
/// `bench/profile.sh`). `httparse_checks_header_values_as_http_does`
/// holds httparse to that for every byte value, in both its scalar and its
/// SIMD paths.
fn header_value(bytes: Bytes) -> HeaderValue {
    // SAFETY: `bytes` is a field value httparse parsed (see above); debug
    // builds check it again.
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
}

/// A request header's name. The names most requests carry are matched here
/// first: `HeaderName::from_bytes` finds them too, but its general lookup
/// took ~80 instructions a header, about 1% of a keep-alive request's
/// user-space work for its `Host` alone (callgrind, `bench/profile.sh`).
fn header_name(raw: &[u8]) -> Result<HeaderName, Rejection> {
    let is = |name: &str| same_name(raw, name.as_bytes());
    let known = match raw.len() {
        4 if is("host") => Some(header::HOST),
        6 if is("accept") => Some(header::ACCEPT),
        6 if is("cookie") => Some(header::COOKIE),
        10 if is("connection") => Some(header::CONNECTION),
        10 if is("user-agent") => Some(header::USER_AGENT),
        12 if is("content-type") => Some(header::CONTENT_TYPE),
        14 if is("content-length") => Some(header::CONTENT_LENGTH),
        15 if is("accept-encoding") => Some(header::ACCEPT_ENCODING),
        _ => None,
    };
    match known {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(raw).map_err(|_| reject(BAD, "invalid header name")),
    }
}

/// `raw` is `lower` (a lowercase header name of the same length) but for
/// the case of its letters: `eq_ignore_ascii_case`, with the case of `lower`
/// known. Only a letter's byte differs from its other case by `0x20` alone,
/// so setting that bit of `raw`'s bytes where `lower` has a letter, and
/// nowhere else, folds exactly the bytes `eq_ignore_ascii_case` folds;
/// folded so, with no branch per byte, the name is a few word compares
/// where `eq_ignore_ascii_case` took seven instructions a byte (~25 for a
/// `Host`; callgrind, bench/CPU-PER-REQUEST.md, session 41).
#[inline(always)]
fn same_name(raw: &[u8], lower: &[u8]) -> bool {
    raw.len() == lower.len()
        && raw.iter().zip(lower).fold(0, |differ, (r, l)| {
            let fold = if l.is_ascii_lowercase() { 0x20 } else { 0 };
            differ | ((r | fold) ^ l)
        }) == 0
}

/// The longest request target the http crate's `Uri` takes (`u16::MAX - 1`).
const MAX_TARGET_BYTES: usize = u16::MAX as usize - 1;

/// Origin-form (`/path?q`), absolute-form (`http://host/path`), authority-form
/// (only for CONNECT) and asterisk-form (only for OPTIONS); the `Uri` is
/// parsed from `target`'s bytes as `slicer` shares them.
fn parse_target(method: &Method, target: &str, slicer: &Slicer<'_>) -> Result<Uri, Rejection> {
    if target.is_empty() {
        return Err(reject(BAD, "empty request target"));
    }
    if target.len() > MAX_TARGET_BYTES {
        // The http crate refuses a URI this long (`TooLong`); it is too long
        // for us to parse, not malformed (RFC 9112 §3).
        return Err(reject(
            StatusCode::URI_TOO_LONG,
            "request target longer than 65534 bytes",
        ));
    }
    // `/` is what `Uri::from_maybe_shared` makes of a `/` (no scheme, no
    // authority, the static `/` path, its slice of the head dropped), so a
    // target of `/` is given it at once, without the slice (two atomic
    // operations on the head's count) and the parse: ~70 user-space
    // instructions a request (callgrind, bench/CPU-PER-REQUEST.md, session
    // 41). `a_root_target_is_the_uri_http_parses` holds the http crate to it.
    let uri = if target == "/" {
        Uri::default()
    } else {
        Uri::from_maybe_shared(slicer.of(target.as_bytes()))
            .map_err(|_| reject(BAD, "invalid request target"))?
    };
    let form_ok = if method == Method::CONNECT {
        uri.authority().is_some() && uri.scheme().is_none()
    } else if target == "*" {
        method == Method::OPTIONS
    } else {
        target.starts_with('/') || uri.scheme().is_some()
    };
    if form_ok {
        Ok(uri)
    } else {
        Err(reject(
            BAD,
            "request target form not allowed for this method",
        ))
    }
}

/// What the framing-relevant headers said, collected in one pass.
#[derive(Debug, Default)]
struct Framing {
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked_last: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    connection_upgrade: bool,
    hosts: usize,
    upgrade: bool,
    expect_continue: bool,
    te_trailers: bool,
}

impl Framing {
    fn observe(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), Rejection> {
        if name == header::CONTENT_LENGTH {
            if self.content_length.is_some() {
                return Err(reject(BAD, "duplicate Content-Length"));
            }
            self.content_length = Some(parse_content_length(value)?);
        } else if name == header::TRANSFER_ENCODING {
            self.observe_transfer_encoding(value)?;
        } else if name == header::CONNECTION {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.connection_keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    self.connection_upgrade = true;
                }
            }
        } else if name == header::HOST {
            self.hosts += 1;
            if !valid_host_seen(value) {
                return Err(reject(BAD, "invalid Host header"));
            }
        } else if name == header::UPGRADE {
            self.upgrade = true;
        } else if name == header::EXPECT {
            if value.eq_ignore_ascii_case(b"100-continue") {
                self.expect_continue = true;
            } else {
                return Err(reject(
                    StatusCode::EXPECTATION_FAILED,
                    "unsupported Expect (only 100-continue is)",
                ));
            }
        } else if name == header::TE {
            self.te_trailers |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        }
        Ok(())
    }

    /// The codings apply in order; chunked must come last and only once. Codings
    /// other than chunked are not decoded here, so they are refused (501).
    fn observe_transfer_encoding(&mut self, value: &[u8]) -> Result<(), Rejection> {
        for token in tokens(value) {
            if self.chunked_last {
                return Err(reject(BAD, "Transfer-Encoding has a coding after chunked"));
            }
            if token.eq_ignore_ascii_case(b"chunked") {
                self.chunked_last = true;
            } else if token.is_empty() {
                return Err(reject(BAD, "empty transfer coding"));
            } else {
                self.transfer_encoding = true;
                if !token
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                {
                    return Err(reject(BAD, "invalid transfer coding"));
                }
            }
        }
        self.transfer_encoding = true;
        Ok(())
    }

    /// The framing and the rest the head says (`headers` gets the Host of
    /// an absolute-form target); taken by reference, so that the head's
    /// large parts stay where `build` puts them together.
    fn resolve(
        self,
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &mut HeaderMap,
        limits: &HeadLimits,
    ) -> Result<Resolved, Rejection> {
        // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request
        // without Host, an absolute-form target included (its authority
        // then overrides the Host, §3.2.2, but Host must still be sent), as
        // nginx and Go's net/http do.
        if version == Version::HTTP_11 && self.hosts == 0 {
            return Err(reject(BAD, "missing Host header (required in HTTP/1.1)"));
        }
        if self.hosts > 1 {
            return Err(reject(BAD, "duplicate Host header"));
        }
        // RFC 9112 §3.2.2: with an absolute-form target the server MUST
        // ignore Host and use the target's authority (its host and port,
        // not userinfo), so the handler sees the host the request is for, as
        // under Go (hyper passes the Host header through). Proxy-style
        // requests only: the origin-form path never gets here.
        if uri.scheme().is_some() {
            if let Some(authority) = uri.authority() {
                let host = authority.as_str().rsplit('@').next().unwrap_or_default();
                let host = HeaderValue::from_str(host)
                    .map_err(|_| reject(BAD, "invalid request target"))?;
                headers.insert(header::HOST, host);
            }
        }
        let framing = if self.transfer_encoding {
            if self.content_length.is_some() {
                return Err(reject(
                    BAD,
                    "both Transfer-Encoding and Content-Length (refused: request smuggling risk)",
                ));
            }
            if version == Version::HTTP_10 {
                return Err(reject(BAD, "Transfer-Encoding in an HTTP/1.0 request"));
            }
            if !self.chunked_last {
                return Err(reject(BAD, "Transfer-Encoding does not end with chunked"));
            }
            if !only_chunked(headers) {
                return Err(reject(
                    StatusCode::NOT_IMPLEMENTED,
                    "transfer codings other than chunked are not supported",
                ));
            }
            BodyFraming::Chunked
        } else {
            match self.content_length {
                None | Some(0) => BodyFraming::None,
                Some(n) if n > limits.max_body_bytes => {
                    return Err(reject(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Content-Length exceeds max_body_bytes",
                    ))
                }
                Some(n) => BodyFraming::Length(n),
            }
        };
        let keep_alive = match version {
            Version::HTTP_10 => self.connection_keep_alive && !self.connection_close,
            _ => !self.connection_close,
        };
        // RFC 9110 §7.8: a server MUST ignore Upgrade in an HTTP/1.0
        // request (an HTTP/1.0 proxy may have forwarded it without knowing
        // it, hop-by-hop as it is).
        let wants_upgrade = *method == Method::CONNECT
            || (self.connection_upgrade && self.upgrade && version != Version::HTTP_10);
        Ok(Resolved {
            expect_continue: self.expect_continue && version == Version::HTTP_11,
            framing,
            keep_alive,
            wants_upgrade,
            te_trailers: self.te_trailers,
        })
    }
}

fn only_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| tokens(v.as_bytes()))
        .all(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// Digits only: no sign, no spaces inside, no list (`5, 5`), at most 19 digits
/// so the value fits a u64.
fn parse_content_length(value: &[u8]) -> Result<u64, Rejection> {
    let invalid = reject(BAD, "invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(invalid)
}

/// `Host = uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2-3):
/// `uri-host = IP-literal / IPv4address / reg-name` (an IPv4 address is a
/// reg-name by its characters), `port = *DIGIT` (so an empty port is allowed,
/// and so is an empty host: the field is empty when the target has no
/// authority). No userinfo, no path, no spaces.
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(literal) = value.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|b| *b == b']') else {
            return false;
        };
        if !valid_ip_literal(&literal[..end]) {
            return false;
        }
        (&[][..], &literal[end + 1..])
    } else {
        // One scan for the usual host: up to the first byte no reg-name
        // holds, and if that is the port's `:`, the host is valid already,
        // and the port is the digits after it.
        let end = run(value, REG_NAME);
        match value.get(end) {
            None => return true,
            Some(b':') => return run(&value[end + 1..], DIGIT) == value.len() - end - 1,
            Some(_) => {}
        }
        let end = value.iter().position(|b| *b == b':').unwrap_or(value.len());
        (&value[..end], &value[end..])
    };
    valid_port(port) && valid_reg_name(host)
}

/// The longest `Host` value [`valid_host_seen`] remembers.
const HOST_MEMO_LEN: usize = 32;

thread_local! {
    /// The last `Host` value this thread found valid, and its length (0:
    /// none yet). Only bytes [`valid_host`] accepted are ever put here.
    static HOST_MEMO: Cell<([u8; HOST_MEMO_LEN], usize)> =
        const { Cell::new(([0; HOST_MEMO_LEN], 0)) };
}

/// [`valid_host`], remembered: a value byte for byte the last one this
/// thread found valid is valid, without the scan.
///
/// Why: every request's `Host` is checked, and a client (a load balancer,
/// a keep-alive connection, a benchmark) sends the same one request after
/// request. `valid_host`'s scan of a usual `Host` (`127.0.0.1:39700`) took
/// ~73 user-space instructions a request; with the compare here (and
/// `header_maps::take`'s `reserve` skipped) `complete` took 83 fewer
/// (callgrind, bench/CPU-PER-REQUEST.md, session 49). The answer is the same: it
/// depends on the bytes alone, and the memo holds only bytes `valid_host`
/// accepted, compared whole; a value that differs in any byte, or in its
/// length, is scanned.
#[inline]
fn valid_host_seen(value: &[u8]) -> bool {
    let n = value.len();
    if n == 0 || n > HOST_MEMO_LEN {
        return valid_host(value);
    }
    // `try_with`: a head parsed while the thread's locals are being
    // destroyed is only scanned.
    HOST_MEMO
        .try_with(|memo| {
            let (mut bytes, len) = memo.get();
            if len == n && same_bytes(value, &bytes[..n]) {
                return true;
            }
            let valid = valid_host(value);
            if valid {
                bytes[..n].copy_from_slice(value);
                memo.set((bytes, n));
            }
            valid
        })
        .unwrap_or_else(|_| valid_host(value))
}

/// Whether `a` and `b`, of the same length, hold the same bytes: eight at a
/// time, the last eight overlapping those before (a `Host` is some 10 to 30
/// bytes: `==` called `bcmp`, whose dispatch and set-up cost more than the
/// compare).
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    debug_assert_eq!(n, b.len());
    if n < 8 {
        return a == b;
    }
    let word = |s: &[u8], at: usize| {
        u64::from_ne_bytes(*s[at..].first_chunk::<8>().expect("eight bytes from at"))
    };
    let mut at = 0;
    while at + 8 < n {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    word(a, n - 8) == word(b, n - 8)
}

/// What follows the host: nothing, or `:` and a port (`*DIGIT`).
fn valid_port(port: &[u8]) -> bool {
    match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`.
fn valid_reg_name(name: &[u8]) -> bool {
    // Every Host a request carries is checked: one table lookup per byte for
    // the usual name, the byte-by-byte rules only from a `%` on.
    let mut i = run(name, REG_NAME);
    while i < name.len() {
        let b = name[i];
        if b == b'%' {
            if !(name.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && name.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else if is_unreserved(b) || is_sub_delim(b) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// `IP-literal = "[" ( IPv6address / IPvFuture ) "]"`, brackets removed;
/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn valid_ip_literal(inner: &[u8]) -> bool {
    if let Some(future) = inner.strip_prefix(b"v").or(inner.strip_prefix(b"V")) {
        let hex = future.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let rest = &future[hex..];
        return hex > 0
            && rest.len() > 1
            && rest[0] == b'.'
            && rest[1..]
                .iter()
                .all(|b| is_unreserved(*b) || is_sub_delim(*b) || *b == b':');
    }
    std::str::from_utf8(inner)
        .ok()
        .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
        .is_some()
}

/// A byte of a reg-name other than `%` (unreserved and sub-delims), in
/// [`HOST_CLASS`].
const REG_NAME: u8 = 1;
/// A digit (of a port), in [`HOST_CLASS`].
const DIGIT: u8 = 2;

/// Each byte's classes in a `Host` value.
const HOST_CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let reg_name = is_unreserved(b as u8) || is_sub_delim(b as u8);
        table[b] = reg_name as u8 * REG_NAME + (b as u8).is_ascii_digit() as u8 * DIGIT;
        b += 1;
    }
    table
};

/// How many bytes at the start of `bytes` are of `class`: four bytes a
/// step while they all are (their classes and-ed, one test), then byte by
/// byte. Every request's `Host` is scanned so, at ~4 user-space
/// instructions a byte where a byte-by-byte scan took 6 (callgrind,
/// bench/CPU-PER-REQUEST.md, session 41).
#[inline(always)]
fn run(bytes: &[u8], class: u8) -> usize {
    let mut at = 0;
    while let Some(&[a, b, c, d]) = bytes.get(at..at + 4) {
        let all = HOST_CLASS[usize::from(a)]
            & HOST_CLASS[usize::from(b)]
            & HOST_CLASS[usize::from(c)]
            & HOST_CLASS[usize::from(d)];
        if all & class == 0 {
            break;
        }
        at += 4;
    }
    while bytes
        .get(at)
        .is_some_and(|b| HOST_CLASS[usize::from(*b)] & class != 0)
    {
        at += 1;
    }
    at
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// Splits a comma-separated header value into trimmed tokens.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(|t| t.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 1024,
        max_headers: 8,
        max_body_bytes: 1000,
    };

    fn parse_ok(raw: &str) -> RequestHead {
        parse(raw.as_bytes(), &LIMITS).unwrap().unwrap().0
    }

    fn status(raw: &str) -> StatusCode {
        parse(raw.as_bytes(), &LIMITS).unwrap_err().status
    }

    /// The search `find_end` replaced (session 41's): `memchr` from LF to LF.
    fn find_end_by_memchr(buf: &[u8], searched: &mut usize) -> Option<usize> {
        let start = (*searched).min(buf.len());
        for lf in memchr::memchr_iter(b'\n', &buf[start..]).map(|i| start + i) {
            match (buf.get(lf + 1), buf.get(lf + 2)) {
                (Some(b'\n'), _) => return Some(lf + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
                _ => {}
            }
        }
        *searched = buf.len().saturating_sub(2);
        None
    }

    /// Checks `find_end` against `find_end_by_memchr` on `buf` from every
    /// place a search may start: the same end, and `searched` moved alike.
    fn same_end(buf: &[u8]) {
        for from in 0..=buf.len() + 1 {
            let (mut a, mut b) = (from, from);
            assert_eq!(
                find_end(buf, &mut a),
                find_end_by_memchr(buf, &mut b),
                "{:?} from {from}",
                String::from_utf8_lossy(buf)
            );
            assert_eq!(
                a,
                b,
                "searched, {:?} from {from}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    /// The word-at-a-time search finds the end where `memchr` finds it:
    /// every string of up to eight bytes of LF, CR, `a` and a byte one above
    /// LF (what the word trick can take for an LF after one), of nine and
    /// ten bytes of the first three (across two words), and every
    /// byte value in every place of a usual head, and of that head cut at
    /// every length.
    #[test]
    fn the_end_is_found_where_memchr_finds_it() {
        // Every string of `len` bytes from `bytes`.
        let every = |bytes: &[u8], len: u32| {
            let k = bytes.len();
            for mut n in 0..k.pow(len) {
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = bytes[n % k];
                        n /= k;
                        b
                    })
                    .collect();
                same_end(&buf);
            }
        };
        for len in 0..=8 {
            every(&[b'\n', b'\r', b'a', b'\n' + 1], len);
        }
        // Across two words.
        for len in 9..=10 {
            every(b"\n\ra", len);
        }
        let usual = b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:38900\r\nAccept: */*\r\n\r\nbody\r\n\r\n";
        for at in 0..usual.len() {
            same_end(&usual[..at]);
            for b in 0..=255u8 {
                let mut buf = usual.to_vec();
                buf[at] = b;
                same_end(&buf);
            }
        }
    }

    #[test]
    fn the_end_of_a_head_is_found_once_across_reads() {
        let mut searched = 0;
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        assert_eq!(find_end(&buf, &mut searched), None);
        // The next search starts where an empty line could have begun, not
        // at the start again.
        assert_eq!(searched, buf.len() - 2);
        buf.extend_from_slice(b"\r");
        assert_eq!(find_end(&buf, &mut searched), None);
        assert_eq!(searched, buf.len() - 2);
        buf.extend_from_slice(b"\n");
        assert_eq!(find_end(&buf, &mut searched), Some(buf.len()));
        assert_eq!(find_end(b"GET / HTTP/1.0\n\nGET", &mut 0), Some(16));
        // Pipelined: the first head's end, not the last.
        let two = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(find_end(two, &mut 0), Some(28));
    }

    /// A head parsed in its place (`HeadPlace`) is moved into a request
    /// whole, as the head the copying parser returns, and is then the
    /// request's only (the place drops nothing: a double drop would free
    /// the header map twice); one left in its place is dropped with it
    /// (the bytes its target and values are sliced from are the caller's
    /// alone again), and so is one a second parse puts over it.
    #[test]
    fn a_head_in_its_place_moves_into_the_request_or_drops_with_the_place() {
        let heads: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"ALONGEXTENSIONMETHOD /a?q HTTP/1.0\r\nHost: h:1\r\nX-T: v\r\nX-T: w\r\n\r\n",
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        ];
        for raw in heads {
            let expected = parse(raw, &LIMITS).unwrap().unwrap().0;
            let mut rbuf = BytesMut::from(raw);
            let end = End::found(find_end(&rbuf, &mut 0));
            let mut slot = MaybeUninit::uninit();
            let mut place = HeadPlace::new(&mut slot);
            assert!(parse_from(&mut rbuf, end, &LIMITS, &mut place).unwrap());
            assert_eq!(place.get().uri, expected.uri);
            let mut request = http::Request::new(());
            // SAFETY: full: `parse_from` answered `Ok(true)` just above.
            unsafe { place.move_into(&mut request) };
            drop(place);
            assert_eq!(request.method(), expected.method);
            assert_eq!(*request.uri(), expected.uri);
            assert_eq!(request.version(), expected.version);
            assert_eq!(*request.headers(), expected.headers);
            drop(request);

            let shared = Bytes::copy_from_slice(raw);
            let mut slot = MaybeUninit::uninit();
            let mut place = HeadPlace::new(&mut slot);
            let mut len = 0;
            assert_eq!(
                parse_in(&shared, Some(&shared), &LIMITS, &mut len, &mut place),
                Ok(true)
            );
            assert!(
                !shared.is_unique(),
                "{raw:?}: the head holds slices of the bytes"
            );
            // A second head put over the first drops the first.
            let again = Bytes::copy_from_slice(raw);
            assert_eq!(
                parse_in(&again, Some(&again), &LIMITS, &mut len, &mut place),
                Ok(true)
            );
            assert!(
                shared.is_unique(),
                "{raw:?}: the first head was not dropped"
            );
            drop(place);
            assert!(
                again.is_unique(),
                "{raw:?}: the head left in its place was not dropped"
            );
        }
    }

    #[test]
    fn absolute_form_authority_is_the_host() {
        let head = parse_ok("GET http://u:p@b.example:81/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.headers["host"], "b.example:81");
        assert_eq!(head.headers.get_all("host").iter().count(), 1);
        assert_eq!(head.uri.path(), "/x");
        // Origin-form and CONNECT keep their Host.
        let head = parse_ok("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.headers["host"], "a");
        let head = parse_ok("CONNECT b.example:443 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.headers["host"], "a");
        // HTTP/1.0 may leave Host out: the authority is the host then too.
        let head = parse_ok("GET http://b.example/ HTTP/1.0\r\n\r\n");
        assert_eq!(head.headers["host"], "b.example");
    }

    #[test]
    fn a_head_read_whole_is_taken_out_of_the_read_buffer() {
        let raw = b"POST /a?q HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET";
        let mut rbuf = BytesMut::from(&raw[..]);
        let end = End::found(find_end(&rbuf, &mut 0));
        let head = parsed_from(&mut rbuf, end, &LIMITS).unwrap().unwrap();
        assert_eq!(head.uri, "/a?q");
        assert_eq!(head.headers["host"], "a");
        assert_eq!(&rbuf[..], b"hiGET", "the body and what follows stay");
        // Refused: the bytes stay where they were (h2c's preface is read
        // from them), and the answer is the copying parser's.
        for bad in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\nrest",
        ] {
            let mut rbuf = BytesMut::from(bad);
            let end = find_end(&rbuf, &mut 0);
            assert!(end.is_some());
            let mut ends = vec![End::found(end)];
            if bad.ends_with(b"\r\n\r\n") {
                ends.push(End::InBuffer);
            }
            for end in ends {
                let refused = parsed_from(&mut rbuf, end, &LIMITS).unwrap_err();
                assert_eq!(refused, parse(bad, &LIMITS).unwrap_err(), "{end:?}");
                assert_eq!(&rbuf[..], bad, "{end:?}");
            }
        }
        // Incomplete: nothing taken.
        let mut rbuf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n"[..]);
        assert!(parsed_from(&mut rbuf, End::Missing, &LIMITS)
            .unwrap()
            .is_none());
        assert_eq!(rbuf.len(), 25);
    }

    /// `header_value` trusts httparse to have checked a field value's bytes
    /// as `HeaderValue` would. Every byte value, inside a short value and
    /// inside one long enough for httparse's SIMD path, through both the
    /// slicing and the copying parser: a head is taken exactly when
    /// `HeaderValue` takes its value (debug builds check it again too).
    #[test]
    fn httparse_checks_header_values_as_http_does() {
        let limits = HeadLimits {
            max_header_bytes: 4096,
            ..LIMITS
        };
        for b in 0..=255u8 {
            let http_takes = HeaderValue::from_bytes(&[b'a', b, b'a']).is_ok();
            for pad in [0, 70] {
                let mut value = vec![b'v'; pad];
                value.extend([b'a', b, b'a']);
                value.extend(vec![b'v'; pad]);
                let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-T: ".to_vec();
                raw.extend(&value);
                raw.extend(b"\r\n\r\n");
                let copied = parse(&raw, &limits);
                let mut rbuf = BytesMut::from(&raw[..]);
                let end = End::found(find_end(&rbuf, &mut 0));
                let sliced = parsed_from(&mut rbuf, end, &limits);
                let mut rbuf = BytesMut::from(&raw[..]);
                let in_place = parsed_from(&mut rbuf, End::InBuffer, &limits);
                for (how, taken) in [
                    ("copied", copied.map(|h| h.map(|(head, _)| head))),
                    ("sliced", sliced),
                    ("read in place", in_place),
                ] {
                    match taken {
                        Ok(Some(head)) => {
                            assert!(http_takes, "byte {b:#04x} ({how}, pad {pad}) was taken");
                            assert_eq!(head.headers["x-t"].as_bytes(), &value[..]);
                        }
                        other => assert!(
                            !http_takes && other.is_err(),
                            "byte {b:#04x} ({how}, pad {pad}): {:?}",
                            other.map(|h| h.is_some())
                        ),
                    }
                }
            }
        }
    }

    /// The `Uri` a `/` target is given at once is the one the http crate
    /// parses from it, to every accessor (`parse_target`).
    #[test]
    fn a_root_target_is_the_uri_http_parses() {
        let parsed = Uri::from_maybe_shared(Bytes::from_static(b"/")).unwrap();
        let given = parse_ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n").uri;
        assert_eq!(given, parsed);
        assert_eq!(given.to_string(), parsed.to_string());
        assert_eq!(given.scheme(), parsed.scheme());
        assert_eq!(given.authority(), parsed.authority());
        assert_eq!(given.path(), parsed.path());
        assert_eq!(given.query(), parsed.query());
        assert_eq!(given.path_and_query(), parsed.path_and_query());
        assert_eq!(format!("{given:?}"), format!("{parsed:?}"));
        // The forms still apply to it.
        assert_eq!(status("CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n"), BAD);
        assert_eq!(parse_ok("OPTIONS / HTTP/1.1\r\nHost: a\r\n\r\n").uri, "/");
    }

    /// `GET`, known at once, is the method `Method::from_bytes` reads, and
    /// every other method still goes to it.
    #[test]
    fn methods_are_the_methods_http_reads() {
        for raw in [
            "GET", "get", "GETX", "GE", "POST", "HEAD", "PATCH", "X-CUSTOM", "G\u{7f}T",
        ] {
            let ours = method(raw).ok();
            assert_eq!(ours, Method::from_bytes(raw.as_bytes()).ok(), "{raw:?}");
        }
        assert_eq!(method("GET").unwrap(), Method::GET);
    }

    /// `same_name` is `eq_ignore_ascii_case` for every byte value in every
    /// place of every known name, and for every pair of bytes where a name
    /// has a `-` (whose other "case", CR, is no letter).
    #[test]
    fn same_name_folds_what_eq_ignore_ascii_case_folds() {
        for name in [
            "host",
            "accept",
            "cookie",
            "connection",
            "user-agent",
            "content-type",
            "content-length",
            "accept-encoding",
        ] {
            let lower = name.as_bytes();
            for at in 0..lower.len() {
                for b in 0..=255u8 {
                    let mut raw = lower.to_vec();
                    raw[at] = b;
                    assert_eq!(
                        same_name(&raw, lower),
                        raw.eq_ignore_ascii_case(lower),
                        "{name} with {b:#x} at {at}"
                    );
                }
            }
            assert!(same_name(name.to_ascii_uppercase().as_bytes(), lower));
            assert!(!same_name(&lower[1..], lower));
        }
    }

    #[test]
    fn known_header_names_are_the_same_names() {
        for raw in [
            "Host",
            "ACCEPT",
            "cookie",
            "Connection",
            "User-Agent",
            "content-type",
            "Content-Length",
            "Accept-Encoding",
            "x-other",
            "Hos",
            "hostx",
            // The known names' lengths, other names.
            "date",
            "pragma",
            "keep-alive",
            "x-request-id",
            "x-custom-field",
            "accept-language",
        ] {
            let expected = HeaderName::from_bytes(raw.as_bytes()).unwrap();
            assert_eq!(header_name(raw.as_bytes()).unwrap(), expected, "{raw}");
        }
        assert_eq!(header_name(b"bad name").unwrap_err().status, BAD);
    }

    #[test]
    fn partial_head_needs_more() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &LIMITS)
            .unwrap()
            .is_none());
    }

    #[test]
    fn framing_and_keep_alive() {
        let h = parse_ok("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive);
        let h = parse_ok("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(!h.keep_alive);
        let h = parse_ok("GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = parse_ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            BAD
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            BAD
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            BAD
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"),
            BAD
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n"),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    /// `valid_host` as it was before its four-bytes-a-step scan
    /// (`run`): the same answer for every value made of the bytes that
    /// matter, in every place, up to five bytes long, and for every byte
    /// value in every place of a usual `Host`.
    #[test]
    fn the_host_scan_answers_as_the_byte_by_byte_one() {
        fn reference(value: &[u8]) -> bool {
            let reg = |b: &u8| is_unreserved(*b) || is_sub_delim(*b);
            let (host, port) = if value.first() == Some(&b'[') {
                return valid_host(value);
            } else {
                let end = value.iter().position(|b| *b == b':').unwrap_or(value.len());
                (&value[..end], &value[end..])
            };
            let port_ok = match port {
                [] => true,
                [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
                _ => false,
            };
            let mut i = 0;
            let mut host_ok = true;
            while i < host.len() {
                let b = host[i];
                if b == b'%' {
                    if !(host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                        && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                    {
                        host_ok = false;
                        break;
                    }
                    i += 3;
                } else if reg(&b) {
                    i += 1;
                } else {
                    host_ok = false;
                    break;
                }
            }
            port_ok && host_ok
        }
        let alphabet = b"a7:%-.@/ F\x80";
        let mut value = Vec::new();
        // Every string over the alphabet up to five bytes long.
        fn all(alphabet: &[u8], value: &mut Vec<u8>, left: usize, check: &dyn Fn(&[u8])) {
            check(value);
            if left == 0 {
                return;
            }
            for b in alphabet {
                value.push(*b);
                all(alphabet, value, left - 1, check);
                value.pop();
            }
        }
        // `valid_host_seen` beside it: each value checked twice, the second
        // time remembered if valid, between values that are not.
        all(alphabet, &mut value, 5, &|v| {
            for checked in [valid_host(v), valid_host_seen(v), valid_host_seen(v)] {
                assert_eq!(checked, reference(v), "{:?}", String::from_utf8_lossy(v));
            }
        });
        let usual = b"www.example-host.com:38900";
        for at in 0..usual.len() {
            for b in 0..=255u8 {
                let mut v = usual.to_vec();
                v[at] = b;
                assert_eq!(valid_host(&v), reference(&v), "{b:#x} at {at}");
                assert_eq!(valid_host_seen(&v), reference(&v), "{b:#x} at {at}");
                v.truncate(at + 1);
                assert_eq!(valid_host(&v), reference(&v), "{b:#x} at the end, {at}");
                assert_eq!(
                    valid_host_seen(&v),
                    reference(&v),
                    "{b:#x} at the end, {at}"
                );
            }
        }
    }

    #[test]
    fn host_values() {
        for ok in [
            "a",
            "example.com:8080",
            "a:",
            "",
            "127.0.0.1",
            "[::1]",
            "[::1]:80",
            "[v1.x:y]",
            "xn--bcher-kva.example",
            "a%20b",
            "a%20b:80",
            "a!$&'()*+,;=b",
        ] {
            let h = parse(
                format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n").as_bytes(),
                &LIMITS,
            );
            assert!(matches!(h, Ok(Some(_))), "{ok:?}: {h:?}");
        }
        for bad in [
            "a b", "a/b", "a@b", "a:xyz", "a:1:2", "[::1", "[::1]x", "[zz]", "[v.x]", "[v1.]",
            "a%2", "a%zz", "a\\b", "a?b", "a#b", "u@a:80", "a\"b", "a:80%", "a%2:80",
        ] {
            assert_eq!(
                status(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")),
                BAD,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn request_line_versions() {
        for bad in [
            "GET / HTTP/1.x\r\nHost: a\r\n\r\n",
            "GET / http/1.1\r\nHost: a\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.10\r\nHost: a\r\n\r\n",
            "GET / HTTP/11\r\nHost: a\r\n\r\n",
            "GET / FOO/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.2 \r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(status(bad), BAD, "{bad:?}");
        }
        assert_eq!(
            status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        assert_eq!(
            status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        assert_eq!(
            status("GET / HTTP/0.9\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        // A later HTTP/1 minor version is served as HTTP/1.1, keeping the head
        // length and the target.
        let raw = b"\r\nPOST /p?q HTTP/1.2\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let (h, len) = parse(raw, &LIMITS).unwrap().unwrap();
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.method, Method::POST);
        assert_eq!(h.uri, "/p?q");
        assert_eq!(h.framing, BodyFraming::Length(2));
        assert_eq!(len, raw.len() - 2);
        // An empty method or target never reaches `other_version`, whatever
        // the version: httparse refuses it first, as a token error (400).
        for empty in [
            " / HTTP/2.0\r\n\r\n",
            "GET  HTTP/2.0\r\n\r\n",
            "GET  / HTTP/1.2\r\n\r\n",
            "\r\nPOST  HTTP/3\r\n\r\n",
            "  HTTP/1.2\r\n\r\n",
        ] {
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let parsed = httparse::Request::new(&mut headers).parse(empty.as_bytes());
            assert_eq!(parsed, Err(httparse::Error::Token), "{empty:?}");
            assert_eq!(status(empty), BAD, "{empty:?}");
        }
        // Still incomplete: wait for the rest of the line.
        assert!(parse(b"GET / HTTP/1.2", &LIMITS).unwrap().is_none());
        assert!(parse(b"GET / HTTP/2.0\r\n", &LIMITS).is_err());
    }

    #[test]
    fn host_rules() {
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), BAD);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), BAD);
        // Absolute-form needs Host too (RFC 9112 §3.2); its authority wins.
        assert_eq!(status("GET http://example.com/x HTTP/1.1\r\n\r\n"), BAD);
        let h = parse_ok("GET http://example.com/x HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(h.uri.path(), "/x");
        assert_eq!(h.uri.host(), Some("example.com"));
        // HTTP/1.0 needs no Host.
        parse_ok("GET / HTTP/1.0\r\n\r\n");
    }

    #[test]
    fn upgrade_is_ignored_in_http_1_0() {
        let upgrade = "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let h11 = parse_ok(&format!("GET / HTTP/1.1\r\nHost: a\r\n{upgrade}"));
        assert!(h11.wants_upgrade);
        let h10 = parse_ok(&format!("GET / HTTP/1.0\r\nHost: a\r\n{upgrade}"));
        assert!(!h10.wants_upgrade, "RFC 9110 §7.8: ignored in HTTP/1.0");
        // CONNECT is an upgrade in any version.
        assert!(parse_ok("CONNECT a:443 HTTP/1.0\r\n\r\n").wants_upgrade);
    }

    /// A head of exactly `max_header_bytes` is read; one byte more is 431,
    /// whole or not; a request line that does not end within the limit is
    /// 414 (the target is what is too long), refused as soon as that much
    /// came.
    #[test]
    fn the_head_limit_is_inclusive_and_names_what_is_too_long() {
        let head = |len: usize| {
            let start = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
            format!("{start}{}\r\n\r\n", "v".repeat(len - start.len() - 4))
        };
        assert!(parse(head(1024).as_bytes(), &LIMITS).unwrap().is_some());
        let over = head(1025);
        assert_eq!(parse(over.as_bytes(), &LIMITS).unwrap_err(), HEAD_TOO_LARGE);
        let unended = &over.as_bytes()[..1024];
        assert_eq!(parse(unended, &LIMITS).unwrap_err(), HEAD_TOO_LARGE);
        assert_eq!(
            parse(&unended[..1023], &LIMITS).map(|h| h.is_none()),
            Ok(true)
        );
        let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(1100));
        assert_eq!(
            parse(long_line.as_bytes(), &LIMITS).unwrap_err(),
            URI_TOO_LONG
        );
        assert_eq!(
            parse(&long_line.as_bytes()[..1024], &LIMITS).unwrap_err(),
            URI_TOO_LONG
        );
        // Empty lines alone up to the limit: no target came to be too long.
        let empty_lines = b"\r\n".repeat(512);
        assert_eq!(parse(&empty_lines, &LIMITS).unwrap_err(), HEAD_TOO_LARGE);
    }

    /// A target of 65534 bytes (the most the http crate's `Uri` takes) is
    /// read; one more is 414, too long, not malformed.
    #[test]
    fn a_target_is_at_most_65534_bytes() {
        let limits = HeadLimits {
            max_header_bytes: 70_000,
            ..LIMITS
        };
        let request =
            |len: usize| format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(len - 1));
        let (head, _) = parse(request(65_534).as_bytes(), &limits).unwrap().unwrap();
        assert_eq!(head.uri.path().len(), 65_534);
        assert_eq!(
            parse(request(65_535).as_bytes(), &limits)
                .unwrap_err()
                .status,
            StatusCode::URI_TOO_LONG
        );
    }

    /// Each target form only with the methods it is for: `*` with OPTIONS,
    /// authority-form (no scheme) with CONNECT.
    #[test]
    fn target_forms_and_their_methods() {
        assert_eq!(parse_ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").uri, "*");
        for bad in [
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT http://a:443/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(status(bad), BAD, "{bad:?}");
        }
    }

    /// A Content-Length of `max_body_bytes` is taken, and so is one of 19
    /// digits (with `max_body_bytes` as high); 20 digits are refused even
    /// when they say a small number.
    #[test]
    fn content_length_bounds() {
        let request =
            |n: &str| format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n");
        assert_eq!(
            parse_ok(&request("1000")).framing,
            BodyFraming::Length(1000)
        );
        let limits = HeadLimits {
            max_body_bytes: u64::MAX,
            ..LIMITS
        };
        let (head, _) = parse(request("9999999999999999999").as_bytes(), &limits)
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, BodyFraming::Length(9_999_999_999_999_999_999));
        assert_eq!(status(&request("00000000000000000005")), BAD);
        assert_eq!(parse_ok(&request("0")).framing, BodyFraming::None);
    }

    /// A transfer coding is a token: one that is not is malformed (400),
    /// one that is, but not chunked, is not implemented (501).
    #[test]
    fn transfer_codings_must_be_tokens() {
        let te = |value: &str| {
            status(&format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {value}\r\n\r\n"
            ))
        };
        assert_eq!(te("x-gzip, chunked"), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(te("g@zip, chunked"), BAD);
        assert_eq!(te(", chunked"), BAD);
        assert_eq!(
            status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            BAD
        );
    }

    /// `Expect: 100-continue` is noted in HTTP/1.1 only (an HTTP/1.0 client
    /// does not wait for it); any other expectation is 417. `TE: trailers`
    /// is noted wherever it is in the list, and only when sent.
    #[test]
    fn expect_and_te() {
        let with = |version: &str, field: &str| {
            parse_ok(&format!(
                "POST / HTTP/{version}\r\nHost: a\r\n{field}\r\n\r\n"
            ))
        };
        assert!(with("1.1", "Expect: 100-Continue").expect_continue);
        assert!(!with("1.0", "Expect: 100-continue").expect_continue);
        assert!(!with("1.1", "X: y").expect_continue);
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n"),
            StatusCode::EXPECTATION_FAILED
        );
        assert!(with("1.1", "TE: gzip, Trailers").te_trailers);
        assert!(with("1.1", "TE: trailers\r\nTE: gzip, trailers").te_trailers);
        assert!(!with("1.1", "TE: gzip").te_trailers);
        assert!(!with("1.1", "X: trailers").te_trailers);
    }

    /// An upgrade needs both `Connection: upgrade` and `Upgrade`.
    #[test]
    fn an_upgrade_takes_both_fields() {
        for fields in [
            "Connection: upgrade",
            "Upgrade: websocket",
            "Connection: keep-alive, Upgrade",
        ] {
            let h = parse_ok(&format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n\r\n"));
            assert!(!h.wants_upgrade, "{fields:?}");
        }
        let h = parse_ok(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n",
        );
        assert!(h.wants_upgrade);
    }

    /// HTTP/1.0 keeps the connection with `keep-alive` only if `close` is
    /// not there too.
    #[test]
    fn http_1_0_keep_alive_and_close() {
        let h = parse_ok("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n");
        assert!(!h.keep_alive);
        let h = parse_ok("GET / HTTP/1.0\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
    }

    /// A refusal counts as the limit (or check) that refused it.
    #[test]
    fn refusals_count_as_their_limit() {
        let limit = |raw: &[u8]| parse(raw, &LIMITS).unwrap_err().limit();
        let fields: String = (0..9).map(|i| format!("X-{i}: 1\r\n")).collect();
        let cases = [
            (
                format!("GET / HTTP/1.1\r\n{fields}\r\n"),
                LimitHit::MaxHeaders,
            ),
            (
                format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(1100)),
                LimitHit::MaxHeaderBytes,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n".into(),
                LimitHit::MaxBodyBytes,
            ),
            (
                format!("GET /{} HTTP/1.1\r\n\r\n", "p".repeat(1100)),
                LimitHit::UriTooLong,
            ),
            ("GET / HTTP/2.0\r\n\r\n".into(), LimitHit::HttpVersion),
            ("GET / HTTP/1.1\r\n\r\n".into(), LimitHit::MalformedRequest),
        ];
        for (raw, hit) in cases {
            assert_eq!(limit(raw.as_bytes()), hit, "{raw:?}");
        }
    }
}
