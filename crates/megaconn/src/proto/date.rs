//! The `Date` header, rendered at most once a second per worker thread (the idea
//! of hyper's `src/common/date.rs`): formatting a date per response would cost
//! more than the rest of the head.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use http::HeaderValue;

struct CachedDate {
    value: HeaderValue,
    next_update: SystemTime,
}

thread_local! {
    static CACHED: RefCell<Option<CachedDate>> = const { RefCell::new(None) };
}

/// The current `Date` header value, at most one second stale.
pub(crate) fn now() -> HeaderValue {
    with_now(|value| value.clone())
}

/// Calls `f` with the current `Date` header value, at most one second stale,
/// without cloning it: an HTTP/1.1 head copies its bytes, and a clone and
/// drop of the shared value per response are two atomic operations it does
/// not need.
pub(crate) fn with_now<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    let now = SystemTime::now();
    CACHED.with(|cell| {
        let mut cached = cell.borrow_mut();
        match &*cached {
            Some(c) if now < c.next_update => f(&c.value),
            _ => {
                let text = httpdate::fmt_http_date(now);
                let value = HeaderValue::from_str(&text).expect("an HTTP date is a valid header");
                let secs = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let next_update = SystemTime::UNIX_EPOCH + Duration::from_secs(secs + 1);
                f(&cached.insert(CachedDate { value, next_update }).value)
            }
        }
    })
}
