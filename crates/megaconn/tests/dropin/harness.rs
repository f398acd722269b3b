//! One app served by `axum::serve` and by megaconn; requests sent the same
//! way to both; answers compared.

use std::net::SocketAddr;

use axum::Router;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::{self, read_response_buffered, SAFETY};

/// One app served by `axum::serve` ("theirs") and by megaconn ("ours").
pub struct Pair {
    pub theirs: SocketAddr,
    pub ours: SocketAddr,
    pub handle: megaconn::ServerHandle,
    pub hyper: tokio::task::JoinHandle<()>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.hyper.abort();
    }
}

impl Pair {
    /// Serves `app` both ways; megaconn with one worker and `builder`'s knobs.
    pub async fn start(app: Router, builder: megaconn::Builder) -> Pair {
        Pair::start_with(app.clone(), app, builder, false).await
    }

    /// As [`Pair::start`], with each server its own app instance (for apps
    /// with state, so that both see the same sequence of requests), and with
    /// `connect_info` asked for the way each server asks for it.
    pub async fn start_with(
        theirs: Router,
        ours: Router,
        builder: megaconn::Builder,
        connect_info: bool,
    ) -> Pair {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let theirs_addr = listener.local_addr().unwrap();
        let hyper = if connect_info {
            let svc = theirs.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move { axum::serve(listener, svc).await.unwrap() })
        } else {
            tokio::spawn(async move { axum::serve(listener, theirs).await.unwrap() })
        };
        let server = listen(builder.connect_info(connect_info));
        let ours_addr = server.local_addr();
        let handle = server.handle();
        tokio::spawn(server.serve(ours));
        Pair {
            theirs: theirs_addr,
            ours: ours_addr,
            handle,
            hyper,
        }
    }

    /// Sends `req` to both (through `client`); asserts the answers match and
    /// returns ours.
    pub async fn same(&self, client: &reqwest::Client, req: &Ask) -> Answer {
        let theirs = req.send(client, self.theirs).await;
        let ours = req.send(client, self.ours).await;
        assert_eq!(ours, theirs, "{req:?}: megaconn (left) vs axum::serve");
        ours
    }
}

/// megaconn with `builder`'s knobs and one worker, listening on
/// 127.0.0.1:0.
pub fn listen(builder: megaconn::Builder) -> megaconn::Server {
    builder
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .unwrap()
}

/// A request, sent the same way to both servers.
#[derive(Debug, Clone)]
pub struct Ask {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
}

pub fn ask(method: &'static str, path: &str) -> Ask {
    Ask {
        method,
        path: path.to_string(),
        headers: Vec::new(),
        body: None,
    }
}

impl Ask {
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Ask {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Ask {
        self.body = Some(body.into());
        self
    }

    pub fn json(self, body: &str) -> Ask {
        self.header("content-type", "application/json")
            .body(body.as_bytes())
    }

    pub async fn send(&self, client: &reqwest::Client, addr: SocketAddr) -> Answer {
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).unwrap();
        let mut req = client.request(method, format!("http://{addr}{}", self.path));
        for (name, value) in &self.headers {
            req = req.header(*name, value);
        }
        if let Some(body) = &self.body {
            req = req.body(body.clone());
        }
        let resp = tokio::time::timeout(SAFETY, req.send())
            .await
            .expect("an answer")
            .expect("a response");
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let body = resp.bytes().await.expect("a body").to_vec();
        Answer::from_parts(status, &headers, body)
    }
}

/// What is compared: the status, the headers but `date` (sorted, names
/// lower case), the body.
#[derive(PartialEq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl Answer {
    pub fn from_parts(status: u16, headers: &axum::http::HeaderMap, body: Vec<u8>) -> Answer {
        let headers = normalise(
            headers
                .iter()
                .map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes()))),
        );
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn from_raw(r: common::RawResponse) -> Answer {
        Answer {
            status: r.status,
            headers: normalise(r.headers.iter().map(|(n, v)| (n.as_str(), v.into()))),
            body: r.body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn normalise<'a>(
    headers: impl Iterator<Item = (&'a str, std::borrow::Cow<'a, str>)>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.into_owned()))
        .collect();
    out.sort();
    out
}

/// Writes `bytes` on a fresh connection and reads one response.
pub async fn raw(addr: SocketAddr, bytes: &[u8], head_request: bool) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    Answer::from_raw(read_response_buffered(&mut s, &mut buf, head_request).await)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}
