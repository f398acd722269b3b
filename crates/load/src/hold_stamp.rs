//! When a held connection's reply arrived, from the kernel's receive stamp
//! (`SO_TIMESTAMPNS`), for the parking lot that reads HTTP replies on its
//! beat tick (`hold_lot.rs`).
//!
//! The kernel stamps a segment on `CLOCK_REALTIME`; heartbeats are timed on
//! the monotonic clock (`Instant`). The lot reads both clocks once per tick
//! ([`Clocks`]) and turns each stamp into an `Instant` by its distance from
//! that reading. That holds only while the wall clock moves with the
//! monotonic one: a step of `CLOCK_REALTIME` (NTP, `date -s`) between a
//! reply's arrival and the reading would shift the reply's time by the
//! step, to a negative latency or one of hours. So:
//!
//! - [`StampClock`] compares each tick's reading with the last tick's: if
//!   the two clocks moved apart by more than slewing can explain
//!   ([`stepped`]), the stamps read on this tick may be on either side of
//!   the step, and the tick's replies are timed when read instead (as
//!   `--wake-per-reply` times them; at most a tick late). Such ticks are
//!   counted (`wall_clock_steps` in hold's report).
//! - [`Clocks::arrival`] never puts an arrival after the read that took
//!   it, nor [`reply_time`] before its beat (it takes the read's time
//!   then): a step during the tick's own reads (seen on the next tick) can
//!   blur those replies' latency within `[0, time of the read]`, never
//!   past it, never below zero. Catching such a step on its own tick (the
//!   pair read again after the reads, and the tick's replies recorded only
//!   then) was tried and not kept: +37 instructions a heartbeat (+1.0 %,
//!   callgrind, `bench/HOLD-CPU.md`, 2026-12-04 15:20) on every heartbeat,
//!   for the few replies whose last segment comes after a step that falls
//!   inside a tick's reads (at the million, ~60 reads of a few µs in a
//!   100 ms tick: ~0.2 % of it, by estimate); the next tick catches it.
//!
//! The clock pair is an argument everywhere here, so tests step it without
//! touching the machine's clock.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::tcp_frames::unix_now_ns;

/// The least drift between the two clocks, from one tick's reading to the
/// next, taken for a step: far above what reading the pair costs (two vDSO
/// calls, ~50 ns) and what NTP's slewing does to a tick (500 ppm of 100 ms
/// is 50 µs), far below the step that would show in a latency. A thread
/// preempted between the two reads of a pair can look stepped: that tick is
/// then timed when read, as with `--wake-per-reply`, which costs nothing
/// but a tick's precision.
pub(crate) const STEP_FLOOR: Duration = Duration::from_millis(1);

/// Drift allowed between readings on top of [`STEP_FLOOR`], as a fraction
/// of the time between them: 1/1000 (1,000 ppm, twice NTP's largest
/// slew), for a tick that comes late. Integer arithmetic: `Duration::mul_f64`
/// took ~40 instructions a tick (callgrind, 2026-12-04).
const SLEW_DIVISOR: u128 = 1000;

/// Both clocks read at one moment: turns a kernel receive timestamp
/// (`CLOCK_REALTIME`) into the `Instant` the heartbeats are timed with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clocks {
    /// The monotonic clock.
    pub(crate) now: Instant,
    /// The wall clock, Unix ns.
    pub(crate) unix_ns: u64,
}

impl Clocks {
    /// Reads both clocks now.
    pub(crate) fn read() -> Clocks {
        Clocks {
            now: Instant::now(),
            unix_ns: unix_now_ns(),
        }
    }

    /// When bytes stamped `stamp` (Unix ns) arrived, on the monotonic clock:
    /// as far before or after this reading as the stamp is. A stamp after
    /// the reading (bytes that came while the tick read) is capped at
    /// `read_at()`, the time of the read that took them: nothing arrives
    /// after it is read, whatever the wall clock did meanwhile.
    pub(crate) fn arrival(self, stamp: u64, read_at: impl FnOnce() -> Instant) -> Arrival {
        let now = if stamp <= self.unix_ns {
            let age = Duration::from_nanos(self.unix_ns - stamp);
            self.now.checked_sub(age).unwrap_or(self.now)
        } else {
            let late = self.now + Duration::from_nanos(stamp - self.unix_ns);
            late.min(read_at())
        };
        Arrival {
            now,
            unix_ns: stamp,
        }
    }
}

/// Whether the wall clock stepped between readings `a` and `b` (`b` later):
/// it moved apart from the monotonic clock by more than [`STEP_FLOOR`] plus
/// a [`SLEW_DIVISOR`]th of the time between them.
pub(crate) fn stepped(a: Clocks, b: Clocks) -> bool {
    let mono = b.now.saturating_duration_since(a.now).as_nanos();
    let wall = i128::from(b.unix_ns) - i128::from(a.unix_ns);
    let drift = (wall - mono as i128).unsigned_abs();
    drift > STEP_FLOOR.as_nanos() + mono / SLEW_DIVISOR
}

/// The clock pair a lot's stamps are turned with, checked once per tick
/// against the last tick's.
#[derive(Debug)]
pub(crate) struct StampClock {
    last: Clocks,
}

impl StampClock {
    /// Starts from a reading taken before any stamped reply can arrive.
    pub(crate) fn new(at: Clocks) -> StampClock {
        StampClock { last: at }
    }

    /// Takes the pair read at a tick's start (`now`): `Some(now)` to turn
    /// this tick's stamps with, or `None` if the wall clock stepped since
    /// the last tick, and this tick's replies are to be timed when read.
    pub(crate) fn tick(&mut self, now: Clocks) -> Option<Clocks> {
        let last = std::mem::replace(&mut self.last, now);
        (!stepped(last, now)).then_some(now)
    }
}

/// When the reply to a beat sent at `sent` counts as arrived: at
/// `arrived` (its stamp's time, if it had one), or when read (`read_at()`)
/// if it had none, or if the stamp puts it before its beat, which only a
/// wall-clock step during the tick's reads (or a pair read across a
/// preemption) can: then the read is the one time known to be after it.
pub(crate) fn reply_time(
    sent: Instant,
    arrived: Option<Instant>,
    read_at: impl FnOnce() -> Instant,
) -> Instant {
    arrived.filter(|&a| a >= sent).unwrap_or_else(read_at)
}

/// When the bytes of one read arrived (the kernel's stamp of their last
/// segment), on both clocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arrival {
    /// The monotonic clock.
    pub(crate) now: Instant,
    /// The wall clock, Unix ns (the stamp itself).
    pub(crate) unix_ns: u64,
}

/// Asks the kernel to stamp what `stream` receives with its arrival time
/// (`SO_TIMESTAMPNS`, read back by [`recv_stamped`]).
pub(crate) fn stamp_arrivals(stream: &std::net::TcpStream) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is open; the option value is a c_int of the
    // length given.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads into `buf` like `read`, with the kernel's receive stamp of the
/// last segment read (Unix ns), if it gave one.
pub(crate) fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<u64>)> {
    // Room for one `SCM_TIMESTAMPNS` message (a timespec), u64-aligned as
    // `cmsghdr` needs.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (valid for `buf`) and `control`, both
    // alive for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_ macros walk the control data the kernel wrote
    // (`msg_controllen` says how much); the timespec is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_read_carries_the_time_its_bytes_arrived_not_the_time_of_the_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        stamp_arrivals(&server).unwrap();
        // The kernel turns stamping on from a work queue, a moment after the
        // first socket on the machine asks: exchange until a read is stamped
        // (bounded), then judge a stamped one.
        let gave_up = std::time::Instant::now() + Duration::from_secs(30);
        let (before, there, stamp) = loop {
            let before = unix_now_ns();
            client.write_all(b"reply").unwrap();
            // Wait until the bytes are there, then note the time: they
            // arrived before it, so a stamp taken at the read would come
            // after it.
            let mut pfd = libc::pollfd {
                fd: server.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            assert_eq!(unsafe { libc::poll(&mut pfd, 1, 30_000) }, 1);
            let there = unix_now_ns();
            let mut buf = [0u8; 16];
            let (n, stamp) = recv_stamped(server.as_raw_fd(), &mut buf).unwrap();
            assert_eq!(&buf[..n], b"reply");
            match stamp {
                Some(stamp) => break (before, there, stamp),
                None => assert!(
                    std::time::Instant::now() < gave_up,
                    "no read stamped in 30 s"
                ),
            }
        };
        assert!(
            (before..=there).contains(&stamp),
            "{before} <= {stamp} <= {there}"
        );
    }

    #[test]
    fn a_stamp_becomes_the_instant_as_far_before_or_after_the_reading() {
        let clocks = Clocks::read();
        let ms = Duration::from_millis(3);
        let never = || -> Instant { unreachable!("an earlier stamp needs no read time") };
        let early = clocks.arrival(clocks.unix_ns - 3_000_000, never);
        assert_eq!(clocks.now - early.now, ms);
        assert_eq!(early.unix_ns, clocks.unix_ns - 3_000_000);
        let late = clocks.arrival(clocks.unix_ns + 3_000_000, || clocks.now + 2 * ms);
        assert_eq!(late.now - clocks.now, ms);
    }

    const SEC: u64 = 1_000_000_000;

    /// The latency a lot records for a reply to a beat sent at `sent`,
    /// stamped `stamp` and read at `read`, on a tick whose pair is `tick`
    /// (as `Lot::take_events` and `ThreadCtx::answered` compute it).
    fn latency(
        clock: &mut StampClock,
        tick: Clocks,
        sent: Instant,
        stamp: u64,
        read: Instant,
    ) -> Duration {
        let arrived = clock.tick(tick).map(|c| c.arrival(stamp, || read).now);
        reply_time(sent, arrived, || read).saturating_duration_since(sent)
    }

    /// A wall clock stepped by `step_ns` (forward if positive) between a
    /// beat's reply and the tick that reads it.
    fn stepped_between_reply_and_tick(step_ns: i64) -> (Duration, bool) {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let unix0 = 1_800_000_000 * SEC;
        let wall = |at: Duration, step: i64| unix0.wrapping_add_signed(step) + at.as_nanos() as u64;
        // Ticks at 0 and 100 ms; the beat goes out at 0, its reply is
        // stamped at 30 ms (before the step), the step comes at 60 ms, the
        // tick at 100 ms reads the reply at 101 ms.
        let mut clock = StampClock::new(Clocks {
            now: t0,
            unix_ns: wall(ms(0), 0),
        });
        let tick = Clocks {
            now: t0 + ms(100),
            unix_ns: wall(ms(100), step_ns),
        };
        let stepped = stepped(clock.last, tick);
        let l = latency(&mut clock, tick, t0, wall(ms(30), 0), t0 + ms(101));
        (l, stepped)
    }

    #[test]
    fn a_wall_clock_step_between_ticks_times_that_ticks_replies_by_the_read() {
        let ms = Duration::from_millis;
        // Undisturbed, the stamp gives the reply's real latency: 30 ms.
        assert_eq!(stepped_between_reply_and_tick(0), (ms(30), false));
        // NTP's slew over a tick (50 µs) is not a step; it shifts the reply
        // by no more than itself.
        let slewed = (Duration::from_micros(29_950), false);
        assert_eq!(stepped_between_reply_and_tick(50_000), slewed);
        // A step either way, small or of an hour: the reply is timed when
        // read (101 ms), not 30 ms ± the step (negative, or an hour).
        for step in [5_000_000, -5_000_000, 3600 * SEC as i64, -3600 * SEC as i64] {
            assert_eq!(
                stepped_between_reply_and_tick(step),
                (ms(101), true),
                "step {step} ns"
            );
        }
    }

    #[test]
    fn the_tick_after_a_step_turns_stamps_again() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let unix0 = 1_800_000_000 * SEC;
        let mut clock = StampClock::new(Clocks {
            now: t0,
            unix_ns: unix0,
        });
        let hour = 3600 * SEC;
        let stepped = Clocks {
            now: t0 + ms(100),
            unix_ns: unix0 + hour + 100_000_000,
        };
        assert!(clock.tick(stepped).is_none());
        // The next tick compares with the stepped reading: no step since.
        let next = Clocks {
            now: t0 + ms(200),
            unix_ns: unix0 + hour + 200_000_000,
        };
        let sent = t0 + ms(110);
        let l = latency(&mut clock, next, sent, unix0 + hour + 150_000_000, next.now);
        assert_eq!(l, ms(40));
    }

    #[test]
    fn a_step_during_the_reads_never_times_a_reply_after_its_read_or_before_its_beat() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let unix0 = 1_800_000_000 * SEC;
        let tick = Clocks {
            now: t0,
            unix_ns: unix0,
        };
        let sent = t0 - ms(50);
        let read = t0 + ms(2);
        // Stepped an hour forward after the tick's reading, before the
        // reply's last segment came: capped at its read.
        let ahead = tick.arrival(unix0 + 3600 * SEC + 1_000_000, || read);
        assert_eq!(ahead.now, read);
        // An hour back: before its beat, so timed by its read, not negative.
        let behind = tick.arrival(unix0 - 3600 * SEC, || read);
        assert!(behind.now < sent);
        assert_eq!(reply_time(sent, Some(behind.now), || read), read);
        // A stamp after the beat stands.
        let fine = tick.arrival(unix0 - 20_000_000, || read);
        assert_eq!(reply_time(sent, Some(fine.now), || read), t0 - ms(20));
    }

    #[test]
    fn a_late_tick_allows_for_slewing_not_for_a_step() {
        let t0 = Instant::now();
        let unix0 = 1_800_000_000 * SEC;
        let a = Clocks {
            now: t0,
            unix_ns: unix0,
        };
        // 10 s late, slewed 500 ppm (5 ms): not a step.
        let slewed = Clocks {
            now: t0 + Duration::from_secs(10),
            unix_ns: unix0 + 10 * SEC + 5_000_000,
        };
        assert!(!stepped(a, slewed));
        let jumped = Clocks {
            now: t0 + Duration::from_secs(10),
            unix_ns: unix0 + 10 * SEC + 50_000_000,
        };
        assert!(stepped(a, jumped));
    }
}
