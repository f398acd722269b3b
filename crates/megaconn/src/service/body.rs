//! The request body handed to the service: an [`http_body::Body`] of [`Bytes`].
//!
//! The connection reads the body only as fast as the handler consumes it: a
//! one-slot channel connects the two. The connection learns that the handler
//! wants data the first time the body is polled, which is when a pending
//! `Expect: 100-continue` gets its `100 Continue`.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use crate::error::BodyError;
use crate::BoxError;

/// A request body. Empty bodies cost nothing; others stream from the connection.
#[derive(Debug, Default)]
pub struct Body {
    kind: Kind,
}

#[derive(Debug, Default)]
enum Kind {
    #[default]
    Empty,
    Full(Option<Bytes>),
    Incoming {
        shared: Arc<Channel>,
        /// Bytes still expected when the length is known (Content-Length).
        remaining: Option<u64>,
    },
    /// An HTTP/2 stream's DATA frames (and trailers).
    H2(crate::service::h2_body::RecvBody),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::default()
    }

    /// A body of one chunk (handy in tests and for building requests by hand).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Body {
        Body {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    /// A streaming body and the sender the connection feeds it with.
    pub(crate) fn channel(content_length: Option<u64>) -> (BodySender, Body) {
        let shared = Arc::new(Channel::default());
        let body = Body {
            kind: Kind::Incoming {
                shared: shared.clone(),
                remaining: content_length,
            },
        };
        (BodySender { shared }, body)
    }

    /// A body read from an HTTP/2 stream.
    pub(crate) fn h2(recv: crate::service::h2_body::RecvBody) -> Body {
        Body {
            kind: Kind::H2(recv),
        }
    }
}

/// The error of `http_body_util::Limited`, which axum's extractors and
/// tower-http map to `413 Payload Too Large`: what a service sees when the
/// body passes `max_body_bytes`, so megaconn's limit composes with the app's
/// own (`RequestBodyLimitLayer`, `DefaultBodyLimit`) as if it were one of
/// them. The type is `#[non_exhaustive]` and cannot be built outside its
/// crate, so this takes the one `Limited` returns for a body one byte over
/// a limit of zero.
fn length_limit_error() -> BoxError {
    let mut over =
        http_body_util::Limited::new(http_body_util::Full::new(Bytes::from_static(b"x")), 0);
    let mut cx = Context::from_waker(Waker::noop());
    match http_body::Body::poll_frame(Pin::new(&mut over), &mut cx) {
        Poll::Ready(Some(Err(e))) => e,
        _ => Box::new(BodyError::TooLarge { limit: 0 }),
    }
}

/// The bytes of `data`, the chunk that took a body `past` bytes past its
/// limit, up to one past it: what the handler is handed before the error
/// ([`BodySender::send_past_limit`] says why; HTTP/2's body does the same).
pub(crate) fn up_to_one_past(data: Bytes, past: u64) -> Bytes {
    // `past` <= `data.len()`: the body was within the limit before.
    let keep = data.len() - (past.min(data.len() as u64) as usize) + 1;
    data.slice(..keep.min(data.len()))
}

impl http_body::Body for Body {
    type Data = Bytes;
    /// A [`BodyError`] (downcast the box to read it), except past
    /// `max_body_bytes`: then `http_body_util::LengthLimitError`, which axum
    /// and tower-http answer with 413.
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.poll_inner(cx).map(|item| {
            item.map(|r| {
                r.map_err(|e| match e {
                    BodyError::TooLarge { .. } => length_limit_error(),
                    other => Box::new(other) as BoxError,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint()
    }
}

impl Body {
    fn poll_inner(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(chunk) => Poll::Ready(chunk.take().map(|b| Ok(Frame::data(b)))),
            Kind::H2(recv) => recv.poll_frame(cx),
            Kind::Incoming { shared, remaining } => {
                let mut state = shared.lock();
                if let Some(item) = state.item.take() {
                    state.item = state.then.take().map(Err);
                    if let (Ok(frame), Some(left)) = (&item, remaining.as_mut()) {
                        if let Some(data) = frame.data_ref() {
                            *left = left.saturating_sub(data.len() as u64);
                        }
                    }
                    wake(&mut state.tx_waker);
                    return Poll::Ready(Some(item));
                }
                if state.finished {
                    return Poll::Ready(None);
                }
                if state.sender_gone {
                    return Poll::Ready(Some(Err(BodyError::Incomplete)));
                }
                state.wanted = true;
                state.rx_waker = Some(cx.waker().clone());
                wake(&mut state.tx_waker);
                Poll::Pending
            }
        }
    }

    fn is_end(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(chunk) => chunk.is_none(),
            Kind::H2(recv) => recv.is_end_stream(),
            Kind::Incoming { remaining, .. } => *remaining == Some(0),
        }
    }

    fn hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(chunk) => SizeHint::with_exact(chunk.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::H2(recv) => recv.size_hint(),
            Kind::Incoming {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            Kind::Incoming { .. } => SizeHint::default(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Kind::Incoming { shared, .. } = &self.kind {
            let mut state = shared.lock();
            state.receiver_gone = true;
            wake(&mut state.tx_waker);
        }
    }
}

/// The shared slot between the connection and the body.
#[derive(Debug, Default)]
struct Channel {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    item: Option<Result<Frame<Bytes>, BodyError>>,
    /// The error that ends the body, when it came while `item` was full
    /// (past the limit: [`BodySender::send_past_limit`] first): handed
    /// over after `item`.
    then: Option<BodyError>,
    /// The handler polled the body at least once.
    wanted: bool,
    finished: bool,
    sender_gone: bool,
    receiver_gone: bool,
    rx_waker: Option<Waker>,
    tx_waker: Option<Waker>,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a waker; the state
        // itself is always consistent, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// Keeps `cx`'s waker in `slot`, not cloning it when the one there wakes
/// the same task already (the connection asks at every turn).
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// What the connection learns when it asks whether to read more body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Demand {
    /// The handler wants the next frame and the slot is free.
    Ready,
    /// The handler dropped the body: whatever is left is to be drained.
    Gone,
}

/// The connection's end of a request body.
#[derive(Debug)]
pub(crate) struct BodySender {
    shared: Arc<Channel>,
}

impl BodySender {
    /// Ready when the handler has polled the body and the slot is empty.
    pub(crate) fn poll_demand(&mut self, cx: &mut Context<'_>) -> Poll<Demand> {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Poll::Ready(Demand::Gone);
        }
        if state.wanted && state.item.is_none() {
            return Poll::Ready(Demand::Ready);
        }
        state.tx_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the handler dropped the body: it will read no more of it
    /// (what is left is drained, or the connection closes).
    pub(crate) fn is_dropped(&self) -> bool {
        self.shared.lock().receiver_gone
    }

    /// Whether the handler waits for the body now: its last poll found the
    /// slot empty and nothing was handed to it since. Not waiting, it has
    /// stopped reading for now (it polls again when it wants more); its
    /// next wait then wakes the connection (`cx`), so that the connection
    /// learns of it while it waits on the socket.
    ///
    /// Waiting, the connection is not registered: each poll of an empty
    /// slot wakes the connection, and a handler polled in the connection's
    /// own task would then wake it at every turn, a spin at 100 % CPU until
    /// the bound passed (the bound's timer wakes the connection instead).
    pub(crate) fn poll_awaited(&mut self, cx: &mut Context<'_>) -> bool {
        let mut state = self.shared.lock();
        let waiting = state.rx_waker.is_some() && state.item.is_none();
        if !waiting {
            register(&mut state.tx_waker, cx);
        }
        waiting
    }

    /// Wakes the handler's last wait for the body: a handler that still
    /// waits polls it again, and shows it ([`poll_awaited`](Self::poll_awaited)
    /// is true again); one that gave up that wait (it stopped awaiting the
    /// body, and kept it) does not, and is then no longer taken for waiting.
    /// The answer wakes the connection (`cx`), which matters when the body
    /// is read in a task of its own: that poll comes after the
    /// connection's own next one, maybe on another thread.
    pub(crate) fn ask_again(&mut self, cx: &mut Context<'_>) {
        let mut state = self.shared.lock();
        wake(&mut state.rx_waker);
        register(&mut state.tx_waker, cx);
    }

    /// Hands one data chunk to the handler. Call only after `Demand::Ready`.
    pub(crate) fn send_data(&mut self, data: Bytes) {
        self.put(Ok(Frame::data(data)));
    }

    /// Ends the body, with trailers if there were any.
    pub(crate) fn finish(self, trailers: Option<HeaderMap>) {
        let mut state = self.shared.lock();
        if let Some(t) = trailers {
            state.item = Some(Ok(Frame::trailers(t)));
        }
        state.finished = true;
        wake(&mut state.rx_waker);
    }

    /// The body went over `max_body_bytes` with `data`, now `past` bytes
    /// past it: hands the handler the bytes of `data` up to one past the
    /// limit, the error ([`fail`](Self::fail), which the caller sends next)
    /// after them.
    ///
    /// Why one byte past: an app's own limit (`RequestBodyLimitLayer`,
    /// `DefaultBodyLimit`: an `http_body_util::Limited` around this body)
    /// at or under megaconn's then sees the body go over it and fails
    /// first, with its own `LengthLimitError`, where axum looks for it
    /// (`Multipart` looks exactly one `source()` under `axum::Error`;
    /// megaconn's error, come through the app's `Limited`, is one level
    /// deeper, and axum answered it `500`). The byte is the client's
    /// own, and the body fails right after it.
    pub(crate) fn send_past_limit(&mut self, data: Bytes, past: u64) {
        self.send_data(up_to_one_past(data, past));
    }

    /// Ends the body with an error the handler will see (after a chunk
    /// still in the slot, if any).
    pub(crate) fn fail(self, error: BodyError) {
        let mut state = self.shared.lock();
        if state.item.is_some() {
            state.then = Some(error);
        } else {
            state.item = Some(Err(error));
        }
        state.finished = true;
        wake(&mut state.rx_waker);
    }

    fn put(&mut self, item: Result<Frame<Bytes>, BodyError>) {
        let mut state = self.shared.lock();
        debug_assert!(state.item.is_none());
        state.item = Some(item);
        wake(&mut state.rx_waker);
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.sender_gone = true;
        wake(&mut state.rx_waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use std::sync::atomic::Ordering::Relaxed;

    #[tokio::test]
    async fn chunks_arrive_in_order_and_demand_follows_polls() {
        let (mut tx, mut body) = Body::channel(Some(6));
        assert_eq!(body.size_hint().exact(), Some(6));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Nobody polled yet: no demand.
        assert!(tx.poll_demand(&mut cx).is_pending());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(tx.poll_demand(&mut cx), Poll::Ready(Demand::Ready));
        tx.send_data(Bytes::from_static(b"abc"));
        assert!(tx.poll_demand(&mut cx).is_pending(), "slot is full");
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert_eq!(body.size_hint().exact(), Some(3));
        tx.send_data(Bytes::from_static(b"def"));
        tx.finish(None);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "def");
    }

    /// The handler waits from a poll that found nothing until something is
    /// handed to it; a wait it gave up (its poll not repeated when asked
    /// again) is no wait; its next wait wakes the connection.
    #[test]
    fn a_wait_lasts_from_an_empty_poll_until_the_handler_is_handed_something() {
        let (mut tx, mut body) = Body::channel(None);
        let woken = std::sync::Arc::new(Woken::default());
        let conn = Waker::from(woken.clone());
        let mut conn_cx = Context::from_waker(&conn);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(!tx.poll_awaited(&mut conn_cx), "not polled yet");
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(woken.0.swap(false, Relaxed), "the wait woke the connection");
        assert!(tx.poll_awaited(&mut conn_cx));
        tx.send_data(Bytes::from_static(b"a"));
        assert!(!tx.poll_awaited(&mut conn_cx), "handed a chunk");
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_ready());
        assert!(!tx.poll_awaited(&mut conn_cx), "busy with it");
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(woken.0.swap(false, Relaxed));
        assert!(tx.poll_awaited(&mut conn_cx), "waits again");
        tx.ask_again(&mut conn_cx);
        assert!(!tx.poll_awaited(&mut conn_cx), "gave that wait up");
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(
            woken.0.swap(false, Relaxed),
            "the answer woke the connection"
        );
        assert!(tx.poll_awaited(&mut conn_cx), "still waiting");
    }

    /// Notes that it was woken.
    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Relaxed);
        }
    }

    #[tokio::test]
    async fn dropped_sender_is_an_incomplete_body() {
        let (tx, body) = Body::channel(None);
        drop(tx);
        let err = body.collect().await.unwrap_err();
        assert!(matches!(
            err.downcast_ref::<BodyError>(),
            Some(BodyError::Incomplete)
        ));
    }

    #[tokio::test]
    async fn past_the_limit_the_error_is_the_one_axum_answers_413() {
        let (tx, body) = Body::channel(None);
        tx.fail(BodyError::TooLarge { limit: 3 });
        let err = body.collect().await.unwrap_err();
        assert!(err.is::<http_body_util::LengthLimitError>(), "{err:?}");
    }

    /// Past the limit the handler gets the bytes up to one past it, then
    /// the error: an app's own `Limited` at the same limit fails first.
    #[tokio::test]
    async fn past_the_limit_one_byte_over_comes_before_the_error() {
        let (mut tx, body) = Body::channel(None);
        let mut limited = http_body_util::Limited::new(body, 4);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut limited).poll_frame(&mut cx).is_pending());
        tx.send_data(Bytes::from_static(b"ab"));
        assert!(limited.frame().await.unwrap().is_ok());
        // 2 + 5 = 7 bytes, 3 past a limit of 4: "abc" goes (5 bytes, one over).
        tx.send_past_limit(Bytes::from_static(b"abcde"), 3);
        tx.fail(BodyError::TooLarge { limit: 4 });
        let err = limited.frame().await.unwrap().unwrap_err();
        // The app's own limit's error, not megaconn's through it.
        assert!(err.is::<http_body_util::LengthLimitError>(), "{err:?}");
        let (mut tx, mut body) = Body::channel(None);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        tx.send_past_limit(Bytes::from_static(b"abcde"), 3);
        tx.fail(BodyError::TooLarge { limit: 2 });
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, "abc");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<http_body_util::LengthLimitError>(), "{err:?}");
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn dropped_body_is_gone_demand() {
        let (mut tx, body) = Body::channel(None);
        drop(body);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(tx.poll_demand(&mut cx), Poll::Ready(Demand::Gone));
    }
}
