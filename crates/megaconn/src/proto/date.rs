//! The `Date` header, rendered at most once a second per worker thread (the idea
//! of hyper's `src/common/date.rs`): formatting a date per response would cost
//! more than the rest of the head.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use tokio::time::Instant;

use crate::observe::clock;

struct CachedDate {
    value: HeaderValue,
    /// When the value's second ends, on the monotonic clock: checked
    /// against the worker's clock ([`clock::now`]), which a turn of the
    /// parking lot reads once for all the responses it sends.
    expires: Instant,
}

thread_local! {
    static CACHED: RefCell<Option<CachedDate>> = const { RefCell::new(None) };
}

/// The current `Date` header value, at most one second stale.
pub(crate) fn now() -> HeaderValue {
    with_now(|value| value.clone())
}

/// Calls `f` with the current `Date` header value, at most one second stale
/// (plus the length of a lot turn), without cloning it: an HTTP/1.1 head
/// copies its bytes, and a clone and drop of the shared value per response
/// are two atomic operations it does not need.
pub(crate) fn with_now<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    let now = clock::now();
    CACHED.with(|cell| {
        let mut cached = cell.borrow_mut();
        match &*cached {
            Some(c) if now < c.expires => f(&c.value),
            _ => {
                let wall = SystemTime::now();
                let text = httpdate::fmt_http_date(wall);
                let value = HeaderValue::from_str(&text).expect("an HTTP date is a valid header");
                let into_second = wall
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .subsec_nanos();
                let expires = now + Duration::from_nanos(1_000_000_000 - u64::from(into_second));
                f(&cached.insert(CachedDate { value, expires }).value)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header is today's date, to the second, whether the lot's turn
    /// clock or a fresh reading decides that it is still current. (The
    /// bound is loose on purpose: a stalled test machine must not fail it;
    /// a cache that never expired would be hours off.)
    #[test]
    fn the_date_is_the_current_second_in_a_turn_and_out_of_one() {
        let check = || {
            let value = now();
            let date = httpdate::parse_http_date(value.to_str().unwrap()).unwrap();
            let wall = SystemTime::now();
            assert!(date <= wall, "{value:?} is in the future");
            assert!(wall.duration_since(date).unwrap() < Duration::from_secs(60));
        };
        check();
        clock::turn(check);
        check();
    }
}
