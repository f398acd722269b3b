//! The access-log line of a gRPC call whose service panicked in `call`
//! (session 52): answered `200` with `grpc-status: 13` where it was a
//! text `500`, on HTTP/1.1 (gRPC-web) and HTTP/2, its line has the `200`
//! that was sent, as a call whose handler's future panicked has; the
//! panic is counted as before. (The answers as gRPC clients read them:
//! `integration/grpc52.rs`.)

use super::access_log::{assert_one_line, h1_exchange};
use super::capture_log;
use super::common::modes::h2_exchange;
use super::common::{h2c_from_own_address, TestServer};

/// The test app's `/panic` panics in `call`; a gRPC `content-type` makes
/// the request a gRPC call, one empty message its body.
#[tokio::test]
async fn a_grpc_call_whose_handler_panicked_in_call_has_its_200_line() {
    capture_log();
    let server = TestServer::start(megaconn::Server::builder().workers(1).access_log(true)).await;
    let raw = b"POST /panic HTTP/1.1\r\nHost: t\r\ncontent-type: application/grpc-web\r\n\
                content-length: 5\r\n\r\n\0\0\0\0\0";
    let (h1, answer) = h1_exchange(server.addr, raw).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("\r\ngrpc-status: 13\r\n"), "{answer}");
    // From an address of its own: the line is told by its peer.
    let (send, h2) = h2c_from_own_address(server.addr).await;
    let request = http::Request::post("http://localhost/panic")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    assert_eq!(
        h2_exchange(&send, request, b"\0\0\0\0\0", true).await.0,
        200
    );
    drop(send);
    assert_eq!(server.handle.stats().panics, 2);
    server.stop().await;
    for (peer, what) in [(h1, "HTTP/1.1"), (h2, "h2c")] {
        assert_one_line(peer, &["status=200", "method=POST", "path=/panic"], what);
    }
}
