//! A response cut by `write_timeout` logs a line naming its client and the
//! setting (session 56's file-serving review). The bound runs from the
//! response's head to its last byte, as Go's `WriteTimeout`, so a
//! download longer than it is cut while its client reads steadily; that
//! cut was counted (`megaconn_timeouts_total`, `closed{write_timeout}`)
//! but logged at debug only, and an operator who set it for an API saw
//! downloads end short with no line saying why.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::common::{self, TestServer};
use super::{capture_log, wait_for_line, Whose};

#[tokio::test]
async fn a_response_cut_by_write_timeout_logs_a_line_naming_its_client() {
    capture_log();
    let builder = megaconn::Server::builder().write_timeout(Some(Duration::from_millis(300)));
    let server = TestServer::start(builder).await;
    let mut s = common::connect_from_own_address(server.addr).await;
    let peer = s.local_addr().unwrap();
    // Its head goes out at once and its body never ends: only the whole
    // response's bound can end it, the client reading all along.
    s.write_all(b"GET /forever-body HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let got = common::read_to_close(&mut s).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let line = wait_for_line(Whose::Peer(peer), "within write_timeout").await;
    assert!(line.contains("closing the connection"), "{line}");
    server.stop().await;
}
