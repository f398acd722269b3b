//! Multi-process `hold`: one process may hold only as many sockets as its
//! RLIMIT_NOFILE allows, so the parent re-executes the current executable with
//! the same arguments plus hidden `--child-index I --child-count P`; each child
//! takes its share of connections and ramp rate, and uses the source addresses
//! evenly with the others.
//!
//! Children speak JSON lines on stdout (other lines are ignored), each tagged
//! `"megaconn_child"`: `progress` (counters, twice a second), `final` (counters
//! and the heartbeat histogram as base64 HdrHistogram V2) or `error` (setup
//! failed). The parent shows the summed progress, forwards SIGINT/SIGTERM to the
//! children as SIGTERM (they stop early and still report), kills any child that
//! outlives the run, and merges the final reports. Children also die with the
//! parent (PR_SET_PDEATHSIG).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::histogram::{decode, encode, merge};
use crate::hold::{
    hold_report, plan, progress_message, run_worker, share, HoldArgs, HoldPlan, RateMeter,
    WorkerOutcome,
};
use crate::hold_conn::{Latencies, Snapshot};
use crate::progress::{Progress, TICK};
use crate::report::HoldReport;
use crate::sys::InterruptGuard;

/// How long stopped children get to send their final report before they are
/// killed (a child holding 20,000 connections needs a moment to close them).
const REPORT_GRACE: Duration = Duration::from_secs(15);

/// A child's final report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildReport {
    /// Counters at the end.
    pub counters: Snapshot,
    /// Connections open when the hold ended.
    pub open_at_end: u64,
    /// Ramp time, seconds.
    pub ramp_secs: f64,
    /// Hold time, seconds.
    pub hold_secs: f64,
    /// Heartbeat latency histogram (ns), base64 HdrHistogram V2.
    pub histogram: String,
    /// Push delivery latency histogram (ns), the same encoding.
    #[serde(default)]
    pub push_histogram: String,
    /// Latencies of heartbeats sent after the ramp (ns), the same encoding.
    #[serde(default)]
    pub holding_histogram: String,
    /// Latencies of heartbeats sent one interval after the ramp (ns), the
    /// same encoding.
    #[serde(default)]
    pub steady_histogram: String,
}

impl ChildReport {
    /// Packs a worker's outcome.
    pub(crate) fn of(o: &WorkerOutcome) -> Self {
        ChildReport {
            counters: o.counters,
            open_at_end: o.open_at_end,
            ramp_secs: o.ramp_secs,
            hold_secs: o.hold_secs,
            histogram: encode(&o.latencies.heartbeats),
            push_histogram: encode(&o.latencies.pushes),
            holding_histogram: encode(&o.latencies.holding),
            steady_histogram: encode(&o.latencies.steady),
        }
    }
}

/// One line of the child protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "megaconn_child", rename_all = "snake_case")]
pub(crate) enum ChildMessage {
    /// Periodic counters.
    Progress {
        /// The counters now.
        counters: Snapshot,
    },
    /// The end of the run.
    Final(ChildReport),
    /// Setup failed.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Merges children's final reports: counters and histograms add up, the ramp
/// is the slowest child's, the hold the shortest.
pub(crate) fn merge_reports(reports: &[ChildReport]) -> Result<WorkerOutcome, String> {
    let mut out = WorkerOutcome {
        counters: Snapshot::default(),
        open_at_end: 0,
        ramp_secs: 0.0,
        hold_secs: f64::INFINITY,
        latencies: Latencies::new(),
    };
    for r in reports {
        out.counters.add(&r.counters);
        out.open_at_end += r.open_at_end;
        out.ramp_secs = out.ramp_secs.max(r.ramp_secs);
        out.hold_secs = out.hold_secs.min(r.hold_secs);
        let l = &mut out.latencies;
        merge(&mut l.heartbeats, &decode(&r.histogram)?);
        for (dst, src) in [
            (&mut l.pushes, &r.push_histogram),
            (&mut l.holding, &r.holding_histogram),
            (&mut l.steady, &r.steady_histogram),
        ] {
            if !src.is_empty() {
                merge(dst, &decode(src)?);
            }
        }
    }
    if reports.is_empty() {
        out.hold_secs = 0.0;
    }
    Ok(out)
}

/// Reads one line of a child's stdout: a protocol message, or `None` for anything
/// else (a log line, say), which is ignored.
pub(crate) fn parse_line(line: &str) -> Option<ChildMessage> {
    if !line.contains("\"megaconn_child\"") {
        return None;
    }
    serde_json::from_str(line).ok()
}

/// Writes one protocol line; false if the parent is gone.
fn send(msg: &ChildMessage) -> bool {
    let line = serde_json::to_string(msg).expect("child messages serialize");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// Runs as child `index` of `count`: does its share and reports on stdout.
pub(crate) fn run_child(
    args: &HoldArgs,
    index: usize,
    count: usize,
) -> Result<HoldReport, LoadError> {
    let plan = match plan(args) {
        Ok(p) => p,
        Err(e) => {
            send(&ChildMessage::Error {
                message: e.to_string(),
            });
            return Err(e);
        }
    };
    let (n, shared) = share(args, &plan, index, count);
    let guard = InterruptGuard::install();
    let mut last: Option<Instant> = None;
    let outcome = run_worker(shared, n, args.threads, args.duration, &guard, |s| {
        if last.is_none_or(|l| l.elapsed() >= Duration::from_millis(500)) {
            last = Some(Instant::now());
            return send(&ChildMessage::Progress { counters: *s });
        }
        true
    })?;
    send(&ChildMessage::Final(ChildReport::of(&outcome)));
    Ok(hold_report(
        args,
        &outcome,
        n,
        (1, plan.sources.len()),
        crate::sys::cpu_secs(),
    ))
}

/// What a reader thread tells the parent (a message boxed: it is ten
/// times the size of an end of file).
enum Event {
    Message(usize, Box<ChildMessage>),
    Eof(usize),
}

/// Kills every child still running and reaps them all.
fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

/// Sends SIGTERM to every child (they stop early and still report).
fn terminate_all(children: &[Child]) {
    for c in children {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    }
}

/// Runs the parent side: starts `plan.processes` children, shows their summed
/// progress, and merges their final reports.
pub(crate) fn run_parent(
    args: &HoldArgs,
    plan: &HoldPlan,
    guard: &InterruptGuard,
) -> Result<WorkerOutcome, LoadError> {
    let p = plan.processes;
    let exe = std::env::current_exe()
        .map_err(|e| LoadError::io("cannot find the current executable", e))?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if !argv
        .iter()
        .any(|a| a.to_str() == Some(args.target.as_str()))
    {
        return Err(LoadError::Child {
            index: 0,
            message: "multi-process hold re-executes this program with its own arguments, which do not look like a `hold` command line; run it from the megaconn binary".into(),
        });
    }
    let (tx, rx) = mpsc::channel();
    let mut children = Vec::with_capacity(p);
    for i in 0..p {
        let mut cmd = Command::new(&exe);
        cmd.args(&argv)
            .args([
                "--child-index",
                &i.to_string(),
                "--child-count",
                &p.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe; the closure touches no shared state.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                kill_all(&mut children);
                return Err(LoadError::Child {
                    index: i,
                    message: format!("cannot start {}: {e}", exe.display()),
                });
            }
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(msg) = parse_line(&line) {
                    if tx.send(Event::Message(i, Box::new(msg))).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Event::Eof(i));
        });
        children.push(child);
    }
    drop(tx);

    // A safety net, not a schedule: on a loaded machine the ramp runs late, so
    // the bound is generous, and reaching it first asks the children to stop
    // and report (SIGTERM) before anything is killed.
    let ramp_bound = Duration::from_secs_f64(2.0 * args.connections as f64 / args.ramp)
        + args.timeout
        + Duration::from_secs(30);
    let hard_deadline = Instant::now() + ramp_bound + args.duration + Duration::from_secs(60);
    let mut latest = vec![Snapshot::default(); p];
    let mut finals: Vec<Option<ChildReport>> = vec![None; p];
    let mut ended = vec![false; p];
    let mut terminated_at: Option<Instant> = None;
    let mut progress = Progress::new(args.connections, "open", args.quiet);
    let mut meter = RateMeter::new();
    let mut last_tick = Instant::now();
    while !ended.iter().all(|&e| e) {
        match rx.recv_timeout(TICK) {
            Ok(Event::Message(i, msg)) => match *msg {
                ChildMessage::Progress { counters } => latest[i] = counters,
                ChildMessage::Final(r) => {
                    latest[i] = r.counters;
                    finals[i] = Some(r);
                }
                ChildMessage::Error { message } => {
                    kill_all(&mut children);
                    progress.finish();
                    return Err(LoadError::Child { index: i, message });
                }
            },
            Ok(Event::Eof(i)) => {
                ended[i] = true;
                if finals[i].is_none() && terminated_at.is_none() {
                    let status = children[i]
                        .wait()
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    kill_all(&mut children);
                    progress.finish();
                    return Err(LoadError::Child {
                        index: i,
                        message: format!("exited ({status}) without a report"),
                    });
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if (guard.interrupted() || now >= hard_deadline) && terminated_at.is_none() {
            if now >= hard_deadline {
                eprintln!("hold: children are late; asking them to stop and report");
            }
            terminate_all(&children);
            terminated_at = Some(now);
        }
        if terminated_at.is_some_and(|t| now >= t + REPORT_GRACE) {
            eprintln!("hold: children did not report in time; killing them");
            break;
        }
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            let mut sum = Snapshot::default();
            latest.iter().for_each(|s| sum.add(s));
            progress.update(sum.open, || {
                progress_message(&sum, meter.rate(sum.heartbeats_ok))
            });
        }
    }
    progress.finish();
    kill_all(&mut children);
    let reports: Vec<ChildReport> = finals.into_iter().flatten().collect();
    if reports.len() < p {
        eprintln!(
            "hold: only {} of {p} children reported; totals are partial",
            reports.len()
        );
    }
    merge_reports(&reports).map_err(|message| LoadError::Child { index: 0, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{record_ns, Percentiles};

    fn outcome(
        peak: u64,
        drops: u64,
        ok: u64,
        latencies_us: std::ops::Range<u64>,
        ramp: f64,
    ) -> WorkerOutcome {
        // The ones from 500 µs up stand for the heartbeats sent after the
        // ramp, from 800 µs up for those sent one interval after it.
        let mut latencies = Latencies::new();
        for us in latencies_us {
            record_ns(&mut latencies.heartbeats, us * 1000);
            if us >= 500 {
                record_ns(&mut latencies.holding, us * 1000);
            }
            if us >= 800 {
                record_ns(&mut latencies.steady, us * 1000);
            }
        }
        WorkerOutcome {
            counters: Snapshot {
                open: peak - drops,
                peak,
                attempted: peak,
                drops,
                heartbeats_ok: ok,
                ..Snapshot::default()
            },
            open_at_end: peak - drops,
            ramp_secs: ramp,
            hold_secs: 1.0,
            latencies,
        }
    }

    #[test]
    fn merging_children_gives_the_single_process_totals() {
        // One process that did everything...
        let single = outcome(300, 3, 1000, 1..1001, 0.5);
        // ...and the same work split over three children, sent through the protocol.
        let parts = [
            outcome(100, 1, 300, 1..301, 0.2),
            outcome(100, 0, 300, 301..601, 0.5),
            outcome(100, 2, 400, 601..1001, 0.4),
        ];
        let reports: Vec<ChildReport> = parts
            .iter()
            .map(|o| {
                let line = serde_json::to_string(&ChildMessage::Final(ChildReport::of(o))).unwrap();
                assert!(line.contains("\"megaconn_child\":\"final\""));
                match serde_json::from_str(&line).unwrap() {
                    ChildMessage::Final(r) => r,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        let merged = merge_reports(&reports).unwrap();
        assert_eq!(merged.counters, single.counters);
        assert_eq!(merged.open_at_end, single.open_at_end);
        assert_eq!(merged.ramp_secs, 0.5);
        let (m, s) = (&merged.latencies, &single.latencies);
        assert_eq!(m.heartbeats.len(), s.heartbeats.len());
        assert_eq!(
            Percentiles::of(&m.heartbeats),
            Percentiles::of(&s.heartbeats)
        );
        assert_eq!(m.holding.len(), 501);
        assert_eq!(Percentiles::of(&m.holding), Percentiles::of(&s.holding));
        assert_eq!(m.steady.len(), 201);
        assert_eq!(Percentiles::of(&m.steady), Percentiles::of(&s.steady));
    }

    #[test]
    fn progress_lines_round_trip() {
        let msg = ChildMessage::Progress {
            counters: Snapshot {
                open: 5,
                ..Snapshot::default()
            },
        };
        let line = serde_json::to_string(&msg).unwrap();
        match serde_json::from_str::<ChildMessage>(&line).unwrap() {
            ChildMessage::Progress { counters } => assert_eq!(counters.open, 5),
            other => panic!("{other:?}"),
        }
        assert!(merge_reports(&[]).unwrap().counters == Snapshot::default());
        assert!(parse_line(&line).is_some());
        assert!(parse_line("2026-01-01 INFO starting").is_none());
        assert!(parse_line(r#"{"megaconn_child":"unknown"}"#).is_none());
    }
}
