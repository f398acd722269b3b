//! The parking lot's slot array reserved smaller than the open-file limit
//! (`crates/megaconn/src/conn/park/slots.rs`): the server starts and says
//! what to lower, connections still park, and one on a descriptor above the
//! array stays awake and keeps being served (`park/awake.rs`), where it used
//! to be closed when it tried to park.
//!
//! What refuses the reservation here is a seccomp filter in the server's
//! process: every `mmap` of writable `MAP_NORESERVE` memory over a page
//! fails with `ENOMEM`, as the address-space limit or strict overcommit
//! make the array's fail, so the array halves down to a page (512
//! descriptors). Why not `ulimit -v` itself: it refuses a mapping only when
//! the whole address space would pass it, and the array is 8 B per
//! descriptor of the hard open-file limit (160 KiB under this machine's
//! 20,000; 8 MiB at most, `fs.nr_open` being 2^20 here), while the rest of
//! the process's address space moves by more than that from one run to the
//! next (glibc's 64 MiB malloc arenas come with the threads that first
//! allocate: `VmPeak` of two identical runs differed by 64 MiB). No limit
//! between "the runtime fits" and "the array does not" holds run after run.
//! Raising the hard limit after the start (the other way above the array)
//! takes `CAP_SYS_RESOURCE`, which the machines that run these tests lack.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::Serving;

/// Upper bound for any wait: reached only when the test fails.
const SAFETY: Duration = Duration::from_secs(60);

/// The array's size once every reservation over a page is refused.
const PAGE_SLOTS: usize = 512;

/// Makes every `mmap` of writable `MAP_NORESERVE` memory over `max` bytes
/// in the process `cmd` starts fail with `ENOMEM` (a seccomp filter set
/// between fork and exec). Only the lot's slot array maps so: glibc maps
/// its arenas `PROT_NONE` first, thread stacks without `MAP_NORESERVE`.
fn refuse_large_noreserve_maps(cmd: &mut Command, max: u32) {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    const LD_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
    const JEQ: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    const JGT: u16 = 0x05 | 0x20; // BPF_JMP | BPF_JGT | BPF_K
    const JSET: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    let op = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
    // struct seccomp_data: nr at 0, arch at 4, args from 16, 8 bytes each
    // (little-endian: the low half first). mmap(addr, len, prot, flags, ..).
    let (nr, arch, len_lo, len_hi, prot, flags) = (0, 4, 24, 28, 32, 40);
    let program = [
        op(LD_ABS, arch, 0, 0),
        op(JEQ, ARCH, 0, 11),
        op(LD_ABS, nr, 0, 0),
        op(JEQ, libc::SYS_mmap as u32, 0, 9),
        op(LD_ABS, flags, 0, 0),
        op(JSET, libc::MAP_NORESERVE as u32, 0, 7),
        op(LD_ABS, prot, 0, 0),
        op(JSET, libc::PROT_WRITE as u32, 0, 5),
        op(LD_ABS, len_hi, 0, 0),
        op(JEQ, 0, 0, 2),
        op(LD_ABS, len_lo, 0, 0),
        op(JGT, max, 0, 1),
        op(RET, libc::SECCOMP_RET_ERRNO | libc::ENOMEM as u32, 0, 0),
        op(RET, libc::SECCOMP_RET_ALLOW, 0, 0),
    ];
    // SAFETY: prctl(2) only, between fork and exec; the program is copied
    // by the kernel during the call.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `megaconn serve` (one worker, an admin listener) whose slot array could
/// get no more than a page, with `args`; and its admin address.
fn serve_with_a_page_of_slots(args: &[&str]) -> (Serving, String) {
    let mut cmd = Serving::serve_command("127.0.0.1:0", args);
    refuse_large_noreserve_maps(&mut cmd, 4096);
    let served = Serving::spawn(&mut cmd);
    let admin = served.admin_addr();
    (served, admin)
}

/// The `/metrics` text.
fn metrics(admin: &str) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(SAFETY)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The sum of the samples of `name` (every label set) whose labels hold
/// `labels` (e.g. `limit="park_slots"`; empty: all).
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']) && rest.contains(labels))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `/metrics` until `done` says yes of it; panics (with the text)
/// past [`SAFETY`].
fn wait_for_metrics(admin: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = metrics(admin);
        if done(&text) {
            return text;
        }
        assert!(start.elapsed() < SAFETY, "never {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A keep-alive `GET /` on `s`, its answer read whole; false if the
/// connection was closed (or reset) instead.
fn get_hello(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"Hello, World!") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"HTTP/1.1 200")
}

/// The reservation refused: the server starts all the same, its warning
/// names the array's size and what to lower (or allow), and an idle
/// connection (on a low descriptor) parks.
#[test]
fn a_refused_reservation_warns_and_connections_still_park() {
    let (served, admin) = serve_with_a_page_of_slots(&["--park-after", "100ms"]);
    let warning = served.wait_for_log("slot array was reserved for fewer descriptors");
    for what in [
        "WARN",
        &format!("slots={PAGE_SLOTS}"),
        "LimitNOFILE",
        "ulimit -v",
    ] {
        assert!(warning.contains(what), "{what:?} in {warning}");
    }
    let mut s = TcpStream::connect(served.addr("http")).unwrap();
    s.set_read_timeout(Some(SAFETY)).unwrap();
    assert!(get_hello(&mut s));
    let text = wait_for_metrics(&admin, "parked", |m| {
        sample(m, "megaconn_connections_parked", "") >= 1.0
    });
    assert_eq!(
        sample(&text, "megaconn_limit_hits_total", "limit=\"park_slots\""),
        0.0
    );
    assert!(get_hello(&mut s), "woken from the lot and answered");
}

/// Connections on descriptors above the array (a page of slots; 600
/// connections) are not lost when they go idle: each stays awake, counted
/// (`park_slots`), and answers its next keep-alive request after the
/// park-after time, as those that parked do. (They were closed when they
/// tried to park.)
#[test]
fn connections_above_the_slot_array_stay_awake_and_are_answered() {
    const CONNECTIONS: usize = 600;
    let (served, admin) = serve_with_a_page_of_slots(&["--park-after", "100ms"]);
    let addr = served.addr("http");
    let mut clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(SAFETY)).unwrap();
            assert!(get_hello(&mut s));
            s
        })
        .collect();
    // Each idle connection parked, was refused, or (as before) closed.
    let settled = |m: &str| {
        sample(m, "megaconn_connections_parked", "")
            + sample(m, "megaconn_limit_hits_total", "limit=\"park_slots\"")
            + sample(m, "megaconn_connections_closed_total", "")
    };
    let text = wait_for_metrics(&admin, "every connection idle", |m| {
        settled(m) >= CONNECTIONS as f64
    });
    let refused = sample(&text, "megaconn_limit_hits_total", "limit=\"park_slots\"");
    assert!(
        sample(&text, "megaconn_connections_parked", "") < CONNECTIONS as f64,
        "some descriptors are above the array's {PAGE_SLOTS}:\n{text}"
    );
    let lost = clients
        .iter_mut()
        .map(get_hello)
        .filter(|answered| !answered)
        .count();
    assert_eq!(
        lost, 0,
        "connections not answered after park-after:\n{text}"
    );
    assert!(refused >= 1.0, "{text}");
    served.wait_for_log("descriptor is above the parking lot's slot array");
    // Idle again, the refused ones stay awake once more, and answer again.
    wait_for_metrics(&admin, "every connection idle again", |m| {
        sample(m, "megaconn_connections_parked", "")
            + sample(m, "megaconn_limit_hits_total", "limit=\"park_slots\"")
            >= (CONNECTIONS as f64) + refused
    });
    assert_eq!(
        clients
            .iter_mut()
            .map(get_hello)
            .filter(|answered| !answered)
            .count(),
        0
    );
    let text = metrics(&admin);
    assert_eq!(
        sample(&text, "megaconn_connections_closed_total", ""),
        0.0,
        "{text}"
    );
}
