//! The parking lot: cold idle connections leave tokio altogether.
//!
//! A keep-alive connection that has been idle for `park_idle_after` gives up its
//! task, its tokio registration and its buffers, and becomes a bare socket in
//! this worker's private epoll set. Tokio watches that one epoll descriptor
//! through a single `AsyncFd`; when a parked socket turns readable (a request,
//! or the client hanging up) it becomes a `TcpStream` and a task again. What a
//! parked connection costs in user space is one `u32` in an fd-indexed deadline
//! array — against ~1 KB for a task per connection (task cell, `ScheduledIo`,
//! timer entry), which is why the million-connection target needs this.
//!
//! Idle timeouts of parked sockets are not timers: once a second a sweep walks
//! the deadline array (a few hundred microseconds per million entries) and
//! closes the expired ones. The price of parking is CPU per idle→active cycle
//! (`epoll_ctl` twice, a task spawn), so only cold connections are parked and
//! busy keep-alive connections stay tasks.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};

use crate::http1::CloseReason;
use crate::lifecycle::{self, ConnTrack};
use crate::limit::{ConnectionLimit, ConnectionSlot};
use crate::stats::{gauge, incr, WorkerStats};
use crate::worker::WorkerContext;

/// Deadline value of a parked socket with no idle timeout.
const NO_DEADLINE: u32 = u32::MAX;

/// Events taken from the private epoll set per wake-up.
const MAX_EVENTS: usize = 256;

/// After this many parkings or wake-ups, give freed task memory back to the OS.
const TRIM_EVERY: usize = 1024;

/// Turns a woken socket back into a served connection.
pub(crate) type Respawn = Rc<dyn Fn(TcpStream, ConnectionSlot, Option<Rc<ConnTrack>>)>;

/// One worker's parking lot.
pub(crate) struct ParkingLot {
    epoll: AsyncFd<OwnedFd>,
    /// Per file descriptor: 0 when not parked, else the deadline second + 1
    /// (counted from `epoch`), or [`NO_DEADLINE`].
    deadlines: RefCell<Vec<u32>>,
    parked: Cell<usize>,
    churn_since_trim: Cell<usize>,
    epoch: Instant,
    limit: ConnectionLimit,
    stats: Arc<WorkerStats>,
    respawn: RefCell<Option<Respawn>>,
    /// Lifecycle tracks of parked connections (only with an `on_connection` hook).
    tracks: RefCell<std::collections::HashMap<RawFd, Rc<ConnTrack>>>,
}

impl std::fmt::Debug for ParkingLot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkingLot")
            .field("parked", &self.parked.get())
            .finish_non_exhaustive()
    }
}

impl ParkingLot {
    /// Creates the private epoll set. Must run inside the worker's runtime.
    pub(crate) fn new(limit: ConnectionLimit, stats: Arc<WorkerStats>) -> io::Result<ParkingLot> {
        // SAFETY: epoll_create1 has no memory arguments; we own the returned fd.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd keeps its descriptor open and unchanged for as long
        // as the AsyncFd owns it.
        let epoll =
            unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        Ok(ParkingLot {
            epoll,
            deadlines: RefCell::new(Vec::new()),
            parked: Cell::new(0),
            churn_since_trim: Cell::new(0),
            epoch: Instant::now(),
            limit,
            stats,
            respawn: RefCell::new(None),
            tracks: RefCell::new(std::collections::HashMap::new()),
        })
    }

    /// Sets (or, with `None`, clears) how woken sockets are served again.
    pub(crate) fn set_respawn(&self, respawn: Option<Respawn>) {
        *self.respawn.borrow_mut() = respawn;
    }

    /// How many connections are parked now.
    pub(crate) fn len(&self) -> usize {
        self.parked.get()
    }

    /// Parks an idle connection's socket until it is readable or `deadline`
    /// passes. Its connection slot stays taken (detached) until it closes.
    pub(crate) fn park(&self, socket: OwnedFd, deadline: Option<Instant>) {
        let fd = socket.as_raw_fd();
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: fd as u64,
        };
        // SAFETY: valid epoll fd, valid socket fd, event outlives the call.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            tracing::warn!(%error, "cannot park connection; closing it");
            self.closed(&socket, CloseReason::io(&error));
            if let Some(track) = lifecycle::current() {
                track.close(CloseReason::io(&error));
            }
            return;
        }
        let idx = fd as usize;
        let mut deadlines = self.deadlines.borrow_mut();
        if deadlines.len() <= idx {
            deadlines.resize((idx + 1).next_power_of_two(), 0);
        }
        deadlines[idx] = deadline.map_or(NO_DEADLINE, |d| self.tick_of(d));
        // The connection's task is running us: keep its lifecycle track.
        lifecycle::set_state(crate::ConnectionState::Parked);
        if let Some(track) = lifecycle::current() {
            self.tracks.borrow_mut().insert(fd, track);
        }
        // The lot owns the descriptor from here on.
        let _ = socket.into_raw_fd();
        self.parked.set(self.parked.get() + 1);
        self.churn_since_trim.set(self.churn_since_trim.get() + 1);
        gauge(&self.stats.connections_parked, 1);
        gauge(&self.stats.connections_idle, 1);
    }

    /// Seconds since `epoch`, rounded up, plus one (0 means "not parked").
    fn tick_of(&self, at: Instant) -> u32 {
        let secs = at
            .saturating_duration_since(self.epoch)
            .as_secs_f64()
            .ceil() as u64;
        u32::try_from(secs + 1)
            .unwrap_or(NO_DEADLINE - 1)
            .min(NO_DEADLINE - 1)
    }

    /// Takes a socket out of the set; the caller owns the returned fd.
    fn unregister(&self, fd: RawFd) -> Option<OwnedFd> {
        let mut deadlines = self.deadlines.borrow_mut();
        let slot = deadlines.get_mut(fd as usize)?;
        if *slot == 0 {
            return None;
        }
        *slot = 0;
        // SAFETY: valid fds; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
        self.parked.set(self.parked.get() - 1);
        gauge(&self.stats.connections_parked, -1);
        gauge(&self.stats.connections_idle, -1);
        // SAFETY: the lot owned this descriptor since `park`.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// A parked connection is closing: free its places, count it, report it.
    fn closed(&self, socket: &OwnedFd, reason: CloseReason) {
        self.count_closed(self.limit.peer_ip(socket), socket.as_raw_fd(), reason);
    }

    fn count_closed(&self, ip: Option<std::net::IpAddr>, fd: RawFd, reason: CloseReason) {
        self.limit.release_detached(ip);
        gauge(&self.stats.connections_open, -1);
        incr(&self.stats.closed);
        self.stats.connection_closed(reason);
        if let Some(track) = self.tracks.borrow_mut().remove(&fd) {
            track.close(reason);
        }
    }

    /// Serves every socket that woke up.
    fn wake_ready(&self) -> io::Result<usize> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        // SAFETY: the buffer holds MAX_EVENTS events; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as i32,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let respawn = self.respawn.borrow().clone();
        for event in &events[..n as usize] {
            let Some(socket) = self.unregister(event.u64 as RawFd) else {
                continue;
            };
            self.churn_since_trim.set(self.churn_since_trim.get() + 1);
            let Some(respawn) = &respawn else {
                self.closed(&socket, CloseReason::Shutdown);
                continue;
            };
            let ip = self.limit.peer_ip(&socket);
            let fd = socket.as_raw_fd();
            match TcpStream::from_std(std::net::TcpStream::from(socket)) {
                Ok(stream) => {
                    let track = self.tracks.borrow_mut().remove(&fd);
                    respawn(stream, self.limit.reattach(ip), track);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wake a parked connection; closed");
                    self.count_closed(ip, fd, CloseReason::io(&e));
                }
            }
        }
        Ok(n as usize)
    }

    /// Closes parked sockets whose idle deadline passed.
    fn sweep(&self) {
        let now = self.tick_of(Instant::now());
        let expired: Vec<RawFd> = self
            .deadlines
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != 0 && **d != NO_DEADLINE && **d <= now)
            .map(|(fd, _)| fd as RawFd)
            .collect();
        for fd in expired {
            if let Some(socket) = self.unregister(fd) {
                incr(&self.stats.timeouts);
                self.closed(&socket, CloseReason::IdleTimeout);
            }
        }
        if self.churn_since_trim.get() >= TRIM_EVERY {
            self.churn_since_trim.set(0);
            trim_heap();
        }
    }

    /// Closes every parked socket (shutdown: they are idle). Returns how many.
    pub(crate) fn close_all(&self) -> usize {
        let parked: Vec<RawFd> = self
            .deadlines
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, d)| **d != 0)
            .map(|(fd, _)| fd as RawFd)
            .collect();
        let mut n = 0;
        for fd in parked {
            if let Some(socket) = self.unregister(fd) {
                self.closed(&socket, CloseReason::Shutdown);
                n += 1;
            }
        }
        n
    }
}

impl Drop for ParkingLot {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// Runs a worker's parking lot until shutdown, when every parked (idle)
/// connection is closed.
pub(crate) async fn run(ctx: Rc<WorkerContext>) {
    let Some(lot) = ctx.park.as_ref() else {
        return;
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            () = ctx.shutdown.wait() => {
                lot.close_all();
                return;
            }
            ready = lot.epoll.readable() => {
                let Ok(mut guard) = ready else { return };
                match lot.wake_ready() {
                    Ok(n) if n < MAX_EVENTS => guard.clear_ready(),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "parking lot epoll_wait failed"),
                }
            }
            _ = sweep.tick() => lot.sweep(),
        }
    }
}

/// Gives freed heap pages back to the OS. Tasks of connections that were parked
/// leave holes glibc keeps; without this, RSS would not show what parking saves.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only touches the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}
