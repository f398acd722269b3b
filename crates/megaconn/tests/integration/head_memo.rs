//! The request head a handler sees, over real sockets, when the header
//! section repeats (the engine remembers the last one its thread read,
//! `proto/http1/head.rs`' `HeadMemo`): each request its own method,
//! target, version, fields and body, whatever section the requests before
//! it sent, on one connection or on two that one worker serves in turn.

use crate::common;

use common::read_response_buffered;
use tokio::io::AsyncWriteExt;

/// What the handler saw of a request: `METHOD target version`, each field
/// as `name=value` in order, and how many body bytes it read.
async fn seen(req: http::Request<megaconn::Body>) -> String {
    use http_body_util::BodyExt;
    let fields: Vec<String> = req
        .headers()
        .iter()
        .map(|(name, value)| format!("{name}={}", String::from_utf8_lossy(value.as_bytes())))
        .collect();
    let line = format!("{} {} {:?}", req.method(), req.uri(), req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map_or(0, |b| b.to_bytes().len());
    format!("{line} {} body={body}", fields.join(";"))
}

/// A server (one worker) whose handler answers what [`seen`] says.
fn server() -> common::AppServer {
    let service = tower::service_fn(|req: http::Request<megaconn::Body>| async move {
        let text = seen(req).await;
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(text),
        )))
    });
    common::AppServer::one_worker(megaconn::Server::builder(), service)
}

/// One request: the bytes sent and what the handler must have seen.
struct Sent {
    raw: String,
    want: String,
}

fn request(line: &str, fields: &[(&str, &str)], body: &str) -> Sent {
    let (method, rest) = line.split_once(' ').expect("a method");
    let (target, version) = rest.split_once(' ').expect("a target");
    let mut raw = format!("{line}\r\n");
    for (name, value) in fields {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    let version = match version {
        "HTTP/1.0" => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let seen: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{}={}", name.to_ascii_lowercase(), value.trim_end()))
        .collect();
    Sent {
        raw,
        want: format!(
            "{method} {target} {version} {} body={}",
            seen.join(";"),
            body.len()
        ),
    }
}

/// The usual requests of a keep-alive client, whose sections repeat,
/// change in one byte (the `Host`'s port, a value's case), gain a body,
/// and go back: one at a time, then all pipelined in one write.
fn requests() -> Vec<Sent> {
    let host = ("Host", "127.0.0.1:41501");
    let other_port = ("Host", "127.0.0.1:41502");
    let accept = ("Accept", "*/*");
    let custom = ("X-Trace", "abc ");
    vec![
        request("GET / HTTP/1.1", &[host], ""),
        request("GET / HTTP/1.1", &[host], ""),
        request("GET /a?b=c HTTP/1.1", &[host], ""),
        request("HEAD /x HTTP/1.1", &[host], ""),
        request("GET / HTTP/1.1", &[other_port], ""),
        request("GET / HTTP/1.1", &[host, accept, custom], ""),
        request("DELETE /r HTTP/1.1", &[host, accept, custom], ""),
        request("GET / HTTP/1.1", &[host, accept, ("X-Trace", "abd ")], ""),
        request("GET / HTTP/1.0", &[host, accept, custom], ""),
        request(
            "POST /p HTTP/1.1",
            &[host, ("Content-Length", "5")],
            "hello",
        ),
        request("PUT /p HTTP/1.1", &[host, ("Content-Length", "5")], "world"),
        request("GET / HTTP/1.1", &[host], ""),
    ]
}

/// Each request answered with what it sent, not what a request before it
/// with the same section (or a section one byte apart) sent: one at a
/// time, then all pipelined in one write, then on two connections taking
/// turns on the one worker.
#[tokio::test]
async fn each_request_sees_its_own_head_when_its_section_repeats() {
    let server = server();
    let addr = server.addr();
    let sent = requests();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    // (The HTTP/1.0 request keeps the connection open: no `Connection:
    // close`, and 1.0 without `keep-alive` closes; so it goes last in each
    // round, on its own connection.)
    let (ten, eleven): (Vec<&Sent>, Vec<&Sent>) =
        sent.iter().partition(|r| r.want.contains("HTTP/1.0"));
    for r in &eleven {
        s.write_all(r.raw.as_bytes()).await.unwrap();
        let head = r.raw.starts_with("HEAD");
        let got = read_response_buffered(&mut s, &mut buf, head).await;
        assert_eq!(got.status, 200);
        if !head {
            assert_eq!(String::from_utf8_lossy(&got.body), r.want);
        }
    }
    let all: String = eleven.iter().map(|r| r.raw.as_str()).collect();
    s.write_all(all.as_bytes()).await.unwrap();
    for r in &eleven {
        let head = r.raw.starts_with("HEAD");
        let got = read_response_buffered(&mut s, &mut buf, head).await;
        if !head {
            assert_eq!(String::from_utf8_lossy(&got.body), r.want, "pipelined");
        }
    }
    // Two connections in turn: the worker's memo holds the other's
    // section when each request comes.
    let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tbuf = Vec::new();
    for (a, b) in eleven.iter().zip(eleven.iter().rev()) {
        for (io, buf, r) in [(&mut s, &mut buf, a), (&mut t, &mut tbuf, b)] {
            io.write_all(r.raw.as_bytes()).await.unwrap();
            let head = r.raw.starts_with("HEAD");
            let got = read_response_buffered(io, buf, head).await;
            if !head {
                assert_eq!(
                    String::from_utf8_lossy(&got.body),
                    r.want,
                    "two connections"
                );
            }
        }
    }
    for r in ten {
        let mut u = tokio::net::TcpStream::connect(addr).await.unwrap();
        u.write_all(r.raw.as_bytes()).await.unwrap();
        let got = read_response_buffered(&mut u, &mut Vec::new(), false).await;
        assert_eq!(String::from_utf8_lossy(&got.body), r.want, "HTTP/1.0");
    }
    server.summary().await;
}
