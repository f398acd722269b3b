//! Where an idle TLS connection's bytes go: a megaconn TLS server (one
//! worker) under a counting global allocator. It reports the live heap per
//! open connection and the allocation sizes that every connection holds.
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
//!   -keyout key.pem -out cert.pem -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1
//! cargo run --release -p megaconn --example tls_idle_heap -- \
//!   --listen 127.0.0.1:38444 --cert cert.pem --key key.pem [--client-ca ca.pem]
//! cargo run --release -p megaconn --example tls_hold -- \
//!   --connect 127.0.0.1:38444 -n 5000 [--h2]             # in another shell
//!   [--client-cert device.pem --client-key device-key.pem]
//! ```
//!
//! With `--client-ca` the server requires client certificates chaining to
//! it (`ClientAuth::Required`): what a verified client's chain adds to an
//! idle connection.
//!
//! The report (live heap per open connection, and the allocation sizes
//! every connection holds) is `heap_count`'s. rustls' 4,101-byte deframer
//! buffer and h2's 16 KiB write buffer used to lead it; with the crates
//! carried in `patches/` neither is held by an idle connection any more.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use megaconn::{Body, Server, TlsConfig};

#[path = "heap_count/mod.rs"]
mod heap_count;
use heap_count::arg;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:38444".into());
    let cert = arg("--cert").ok_or("--cert FILE is required")?;
    let key = arg("--key").ok_or("--key FILE is required")?;
    let mut tls = TlsConfig::from_pem_files(cert, key)?;
    if let Some(ca) = arg("--client-ca") {
        tls = tls.client_auth(megaconn::ClientAuth::Required(
            megaconn::ClientCa::from_pem_file(ca),
        ))?;
    }
    let hello = tower::service_fn(|_req: http::Request<Body>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
            b"Hello, World!",
        ))))
    });
    // HTTP/2 knobs, to see what each changes in an idle h2 connection's
    // heap: H2_STREAM_WINDOW, H2_CONNECTION_WINDOW, H2_MAX_FRAME,
    // H2_MAX_HEADER_LIST (bytes; unset: megaconn's defaults).
    let knob = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let mut builder = Server::bind(listen.parse()?)
        .workers(1)
        .tls(tls)
        .idle_timeout(Some(Duration::from_secs(600)));
    if let Some(n) = knob("H2_STREAM_WINDOW") {
        builder = builder.http2_initial_stream_window_size(n);
    }
    if let Some(n) = knob("H2_CONNECTION_WINDOW") {
        builder = builder.http2_initial_connection_window_size(n);
    }
    if let Some(n) = knob("H2_MAX_FRAME") {
        builder = builder.http2_max_frame_size(n);
    }
    if let Some(n) = knob("H2_MAX_HEADER_LIST") {
        builder = builder.http2_max_header_list_size(n);
    }
    let server = builder.listen()?;
    let handle = server.handle();
    println!("listening on https://{}", server.local_addr());
    tokio::spawn(server.serve(hello));
    tokio::time::sleep(Duration::from_millis(500)).await;
    heap_count::report_when_steady(
        || {
            let stats = handle.stats();
            (stats.connections_open, stats.accepted)
        },
        || {
            let stats = handle.stats();
            format!(
                " ({} idle, {} parked, {} pool buffers out)",
                stats.connections_idle, stats.connections_parked, stats.buffers_checked_out
            )
        },
    )
    .await;
    Ok(())
}
