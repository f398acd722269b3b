//! The line an HTTP/2 server logs when its grown windows' budget
//! (`Builder::http2_grown_windows_budget`) refuses a stream's growth: at
//! most one per 5 s per worker, however many refusals, naming the setting
//! to raise (session 52; before, one line a process, and no count). Here
//! because it needs this binary's log capture.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use megaconn::{Body, Builder};

use super::capture_log;
use super::common::{self, AppServer, SAFETY};

/// A budget no other test uses: the server's lines name it, so this
/// test's lines are told from any other server's in this process.
const BUDGET: u64 = 99_991;

/// What the client uploads, read whole by the handler.
const UPLOAD: usize = 4 << 20;

/// A handler that reads its body whole and answers its length.
async fn count(req: Request<Body>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let mut body = req.into_body();
    let mut n = 0;
    while let Some(Ok(frame)) = body.frame().await {
        n += frame.data_ref().map_or(0, Bytes::len);
    }
    Ok(Response::new(Full::new(Bytes::from(n.to_string()))))
}

/// A stream whose handler keeps up with a 4 MiB upload takes the budget's
/// 64 KiB at its first growth and is refused each window's worth after
/// (128 KiB: some thirty refusals), each counted, logged once per 5 s: the
/// lines are at least one and at most one per 5 s the upload took, fewer
/// than the refusals, and each names the budget and the setting to raise.
#[tokio::test]
async fn a_spent_budget_is_logged_once_per_interval() {
    capture_log();
    let server = AppServer::one_worker(
        Builder::default().http2_grown_windows_budget(BUDGET),
        tower::service_fn(count),
    );
    let _stop = Stop(server.handle.clone());
    let started = std::time::Instant::now();
    let mut client = common::h2c(server.addr()).await;
    client = client.ready().await.unwrap();
    let req = Request::post("http://t/").body(()).unwrap();
    let (answer, mut send) = client.send_request(req, false).unwrap();
    let upload = async {
        let mut left = UPLOAD;
        while left > 0 {
            send.reserve_capacity(left);
            let Some(Ok(room)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await else {
                panic!("the upload's stream failed after {} bytes", UPLOAD - left);
            };
            let n = room.min(left);
            if n == 0 {
                continue;
            }
            left -= n;
            send.send_data(Bytes::from(vec![b'u'; n]), left == 0)
                .expect("DATA sent");
        }
    };
    let answered = async {
        let answer = answer.await.expect("an answer");
        let mut body = answer.into_body();
        let mut said = Vec::new();
        while let Some(data) = body.data().await {
            said.extend_from_slice(&data.expect("the answer reads"));
        }
        String::from_utf8(said).unwrap()
    };
    let (_, said) = tokio::time::timeout(SAFETY, async { tokio::join!(upload, answered) })
        .await
        .expect("the upload answered in time");
    assert_eq!(said, UPLOAD.to_string());
    let stats = server.handle.stats();
    let refusals = stats
        .limit_hits
        .iter()
        .find(|(l, _)| *l == "http2_grown_windows_budget")
        .map_or(0, |h| h.1) as usize;
    let most = 1 + (started.elapsed().as_secs() / 5) as usize;
    assert!(
        refusals > most,
        "{refusals} refusals: too few to tell a limit from none"
    );
    let needle = format!("have grown by {BUDGET} bytes in all (http2_grown_windows_budget)");
    let lines: Vec<String> = super::logged()
        .iter()
        .filter(|m| m.contains(&needle))
        .cloned()
        .collect();
    assert!(
        (1..=most).contains(&lines.len()),
        "{} lines for {refusals} refusals (at most {most}): {lines:?}",
        lines.len()
    );
    assert!(
        lines[0].contains("raise http2_grown_windows_budget"),
        "{}",
        lines[0]
    );
    // Given back when the body ended.
    assert_eq!(stats.http2_grown_windows_bytes, 0);
    assert!(server.stop().await, "the server stops");
}

/// Shuts the server down when dropped (a failed assertion included).
struct Stop(megaconn::ServerHandle);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}
