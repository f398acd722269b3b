//! The `Date` header, rendered at most once a second per worker thread (the idea
//! of hyper's `src/common/date.rs`): formatting a date per response would cost
//! more than the rest of the head. Kept both as a header value (HTTP/2) and
//! as HTTP/1.1's whole `date: ...\r\n` line.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use http::HeaderValue;

/// The length of [`with_line`]'s line: `date: `, an IMF-fixdate (always 29
/// bytes, RFC 9110 §5.6.7) and CRLF.
pub(crate) const LINE_LEN: usize = 37;

struct CachedDate {
    value: HeaderValue,
    /// `date: <value>\r\n`: of a length known when the head is compiled, so
    /// that it is copied as a few words, not through `memcpy` with the
    /// name and the line end apart (~15 user-space instructions a
    /// response; callgrind, bench/CPU-PER-REQUEST.md, session 41).
    line: [u8; LINE_LEN],
    /// The wall-clock second the value shows.
    second: i64,
}

impl CachedDate {
    /// The date of the wall-clock second `second`.
    fn of(second: i64) -> CachedDate {
        let value = format(second);
        let mut line = *b"date: Thu, 01 Jan 1970 00:00:00 GMT\r\n";
        line[6..LINE_LEN - 2].copy_from_slice(value.as_bytes());
        CachedDate {
            value,
            line,
            second,
        }
    }
}

thread_local! {
    static CACHED: RefCell<Option<CachedDate>> = const { RefCell::new(None) };
}

/// The current `Date` header value, at most one second stale.
pub(crate) fn now() -> HeaderValue {
    with_now(|value| value.clone())
}

/// Calls `f` with the current `Date` header value, at most one second stale,
/// without cloning it: a clone and drop of the shared value are two atomic
/// operations a head that copies its bytes does not need.
pub(crate) fn with_now<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    with_cached(|cached| f(&cached.value))
}

/// Calls `f` with the current `Date` header line, `date: <value>\r\n`, as
/// [`with_now`] has the value.
pub(crate) fn with_line<R>(f: impl FnOnce(&[u8; LINE_LEN]) -> R) -> R {
    with_cached(|cached| f(&cached.line))
}

fn with_cached<R>(f: impl FnOnce(&CachedDate) -> R) -> R {
    let second = wall_second();
    let mut f = Some(f);
    // `try_with`: a response may be written from a destructor while the
    // thread's locals are being destroyed (a connection moved to a user
    // thread and dropped at its exit), where `with` would panic inside a
    // destructor and abort the process; then the date is formatted uncached.
    let cached = CACHED.try_with(|cell| {
        let f = f.take().expect("called once");
        let mut cached = cell.borrow_mut();
        match &*cached {
            Some(c) if c.second == second => f(c),
            _ => f(cached.insert(CachedDate::of(second))),
        }
    });
    match (cached, f) {
        (Ok(r), _) => r,
        (Err(_), Some(f)) => f(&CachedDate::of(second)),
        (Err(_), None) => unreachable!("try_with fails before running its closure"),
    }
}

/// The `Date` header value of the wall-clock second `second`.
fn format(second: i64) -> HeaderValue {
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(second.max(0) as u64);
    let text = httpdate::fmt_http_date(wall);
    HeaderValue::from_str(&text).expect("an HTTP date is a valid header")
}

/// The wall clock's current second, from the kernel's coarse clock: the
/// date is to the second, and the coarse clock is the cheap read (no
/// timestamp counter, a few milliseconds behind at most), where the
/// monotonic reading and its expiry check it replaced cost ~20 user-space
/// instructions more per response (callgrind, `bench/profile.sh`). A wall
/// clock stepped back or forward shows at once.
fn wall_second() -> i64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is valid writable memory for one timespec.
    match unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut t) } {
        0 => t.tv_sec,
        // No coarse clock (not Linux 2.6.32 or later): the precise one.
        _ => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A date asked for by a destructor that runs after this thread's cache
    /// is gone (a response written as a thread exits) is still a date: no
    /// panic inside a destructor, which aborts the process.
    #[test]
    fn a_date_asked_after_the_threads_cache_is_gone_is_formatted_uncached() {
        struct AsksOnDrop;
        impl Drop for AsksOnDrop {
            fn drop(&mut self) {
                let value = now();
                assert!(httpdate::parse_http_date(value.to_str().unwrap()).is_ok());
                let line = with_line(|line| *line);
                assert_eq!(&line[6..LINE_LEN - 2], value.as_bytes());
            }
        }
        thread_local! {
            static LATE: AsksOnDrop = const { AsksOnDrop };
        }
        std::thread::spawn(|| {
            // Destroyed in the reverse order of first use: `CACHED` first.
            LATE.with(|_| ());
            let _ = now();
        })
        .join()
        .unwrap();
    }

    /// The line is `date: `, the value and CRLF for any second a date can
    /// show (an IMF-fixdate is 29 bytes from 1970 to 9999).
    #[test]
    fn the_line_is_the_value_between_the_name_and_crlf() {
        for second in [
            0,
            1,
            86_399,
            951_782_400,
            1_764_950_400,
            4_102_444_800,
            253_402_300_799,
        ] {
            let cached = CachedDate::of(second);
            let mut expected = b"date: ".to_vec();
            expected.extend_from_slice(cached.value.as_bytes());
            expected.extend_from_slice(b"\r\n");
            assert_eq!(cached.line.as_slice(), expected.as_slice(), "{second}");
        }
    }

    /// The header is today's date, to the second, in a turn of the lot and
    /// out of one. (The bound is loose on purpose: a stalled test machine
    /// must not fail it; a cache that never expired would be hours off.)
    #[test]
    fn the_date_is_the_current_second_in_a_turn_and_out_of_one() {
        let check = || {
            let value = now();
            // The line is the value's, between `date: ` and CRLF.
            let line = with_line(|line| *line);
            let text = std::str::from_utf8(&line).unwrap();
            let in_line = text
                .strip_prefix("date: ")
                .unwrap()
                .strip_suffix("\r\n")
                .unwrap();
            assert!(httpdate::parse_http_date(in_line).is_ok(), "{text:?}");
            let date = httpdate::parse_http_date(value.to_str().unwrap()).unwrap();
            let wall = SystemTime::now();
            assert!(date <= wall, "{value:?} is in the future");
            assert!(wall.duration_since(date).unwrap() < Duration::from_secs(60));
        };
        check();
        crate::observe::clock::turn(check);
        check();
    }
}
