//! HTTP/1.1 exchanges on scripted IO (hyper's dispatch tests are the model):
//! the client's bytes arrive in the chunks a script gives, every write the
//! server makes is recorded, and the connection runs on the test's own task
//! through `Builder::serve_connection`. No sockets, no timing: what is
//! checked is what the engine does with each split of the input.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use megaconn::{Body, Transport};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads come from `reads` in order, then EOF; writes are recorded one
/// entry per `poll_write` call.
struct Scripted {
    reads: VecDeque<Vec<u8>>,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut chunk) = self.reads.pop_front() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.reads.push_front(chunk.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes.lock().unwrap().push(data.to_vec());
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for Scripted {}

/// Echoes the request body, prefixed with the method and path.
async fn echo(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let head = format!("{} {} ", req.method(), req.uri().path());
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let text = match body {
        Ok(b) => format!("{head}{}", String::from_utf8_lossy(&b)),
        Err(e) => format!("{head}error: {e}"),
    };
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// Serves `chunks` to completion; returns every write, in order.
async fn run(chunks: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let io = Scripted {
        reads: chunks.into(),
        writes: writes.clone(),
    };
    megaconn::Server::builder()
        .serve_connection(io, tower::service_fn(echo))
        .await;
    let out = writes.lock().unwrap().clone();
    out
}

/// The status codes and bodies of the responses in `bytes`, in order.
fn responses(bytes: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = r.parse(rest).expect("a valid response") else {
            panic!("a partial response: {:?}", String::from_utf8_lossy(rest));
        };
        let body_len: usize = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
            .unwrap_or(0);
        let body = String::from_utf8_lossy(&rest[len..len + body_len]).into_owned();
        out.push((r.code.unwrap(), body));
        rest = &rest[len + body_len..];
    }
    out
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n";
const POST: &[u8] = b"POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n";

#[tokio::test]
async fn a_request_split_at_any_byte_reads_the_same() {
    for input in [GET, POST] {
        let whole = responses(&run(vec![input.to_vec()]).await.concat());
        for at in 1..input.len() {
            let split = vec![input[..at].to_vec(), input[at..].to_vec()];
            let got = responses(&run(split).await.concat());
            assert_eq!(got, whole, "split at {at}");
        }
        let one_byte_each = input.iter().map(|b| vec![*b]).collect();
        assert_eq!(responses(&run(one_byte_each).await.concat()), whole);
    }
    assert_eq!(
        responses(&run(vec![POST.to_vec()]).await.concat()),
        [(200, "POST /b abcde".to_string())]
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_in_one_write() {
    let input = [GET, POST, GET].concat();
    let writes = run(vec![input]).await;
    let all = writes.concat();
    assert_eq!(
        responses(&all),
        [
            (200, "GET /a ".to_string()),
            (200, "POST /b abcde".to_string()),
            (200, "GET /a ".to_string()),
        ]
    );
    // Bodiless requests read together are answered with one write.
    let writes = run(vec![[GET, GET, GET].concat()]).await;
    assert_eq!(responses(&writes.concat()).len(), 3);
    assert_eq!(writes.len(), 1, "three responses, one write");
}

#[tokio::test]
async fn a_malformed_request_gets_400_and_nothing_after_it_is_served() {
    let input = [
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".as_slice(),
        GET,
    ]
    .concat();
    let got = responses(&run(vec![input]).await.concat());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 400);
}
