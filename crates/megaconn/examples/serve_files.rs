//! A file server on megaconn: downloads and video segments from a directory
//! (tower-http's `ServeDir`: `Range`, `HEAD`, `304`s, precompressed `.gz`
//! and `.br` files; `If-Range`, which it ignores, by a middleware of ours)
//! and uploads streamed to disk, nginx's static `location`
//! and `dav_methods PUT` in one Rust service. The README's "Recipe: serving
//! files" says why each setting is what it is, and what was measured.
//!
//! ```text
//! cargo run --release -p megaconn --example serve_files [-- LISTEN ROOT UPLOADS [CHUNK]]
//! curl -O http://127.0.0.1:3000/files/big.bin           # -r 0-99 for a range
//! curl -T big.bin http://127.0.0.1:3000/upload/big.bin  # streamed, not buffered
//! ```
//!
//! `CHUNK`: the bytes `ServeDir` reads from a file at a time
//! (`with_buf_chunk_size`; default 65536, tower-http's own). Memory per
//! slow download is about two chunks (the one megaconn holds until the
//! kernel takes it, and tokio's `File` buffer), CPU per GiB falls as it
//! grows: 16384 for tens of thousands of slow clients a box
//! (`bench/FILES.md`, whose scripts run this example at each size).
//!
//! Ctrl-C or SIGTERM drains: downloads in flight go on up to
//! `shutdown_timeout`, then are cut.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{IF_RANGE, LAST_MODIFIED, RANGE};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::put;
use axum::Router;
use futures_util::TryStreamExt;
use tokio::io::AsyncWriteExt;
use tower_http::services::ServeDir;

/// The largest upload taken (nginx's `client_max_body_size`); megaconn's
/// own default is 16 MiB.
const MAX_UPLOAD: u64 = 4 << 30;

/// `ServeDir`'s read size when `CHUNK` is not given: tower-http's own
/// default, so that the example serves as `ServeDir::new` does.
const DEFAULT_CHUNK: usize = 64 * 1024;

/// How long a drain waits for downloads in flight before it cuts them:
/// a slow phone fetching a large file can take far longer than the 30 s
/// default, and a restart cuts it anyway (the client resumes with `Range`).
const DRAIN: Duration = Duration::from_secs(120);

/// Streams the request body to `UPLOADS/name`, through a temporary file
/// renamed at the end, so a cut upload leaves no half file under its name.
async fn upload(
    State(dir): State<PathBuf>,
    Path(name): Path<String>,
    body: Body,
) -> Result<String, (StatusCode, String)> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name.is_empty() || name.starts_with('.') || !plain {
        return Err((StatusCode::BAD_REQUEST, "bad file name\n".into()));
    }
    // A name of its own per upload: two uploads of one name at once must
    // not write one file (the later rename wins, whole).
    static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let part = dir.join(format!(".{name}.{}.{n}.part", std::process::id()));
    let failed = |status: StatusCode, e: &dyn std::fmt::Display| (status, format!("{e}\n"));
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| failed(StatusCode::INTERNAL_SERVER_ERROR, &e))?;
    let mut body = body.into_data_stream();
    let mut written: u64 = 0;
    let result = async {
        // One chunk (at most 64 KiB) at a time: memory stays bounded
        // whatever the size; a client too slow (`min_request_body_rate`)
        // or silent (`idle_timeout`) ends the stream with an error.
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| failed(StatusCode::BAD_REQUEST, &e))?
        {
            written += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| failed(StatusCode::INTERNAL_SERVER_ERROR, &e))?;
        }
        file.flush()
            .await
            .map_err(|e| failed(StatusCode::INTERNAL_SERVER_ERROR, &e))
    }
    .await;
    drop(file);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&part).await;
        tracing::warn!(name, written, error = %e.1.trim_end(), "upload failed");
        return Err(e);
    }
    tokio::fs::rename(&part, dir.join(&name))
        .await
        .map_err(|e| failed(StatusCode::INTERNAL_SERVER_ERROR, &e))?;
    Ok(format!("{written}\n"))
}

/// `If-Range` for `ServeDir`, which ignores it (tower-http 0.6): a client
/// resuming a download of a file replaced since would get the new file's
/// bytes spliced onto the old one's (`206` where RFC 9110 §13.1.5 says the
/// whole file, `200`; nginx sends `200`). `Last-Modified` is the only
/// validator `ServeDir` gives, so a date must equal it; an entity tag
/// never matches.
async fn if_range(req: Request, next: Next) -> Response {
    let Some(validator) = req.headers().get(IF_RANGE).cloned() else {
        return next.run(req).await;
    };
    let mut whole = Request::new(Body::empty());
    *whole.method_mut() = req.method().clone();
    *whole.uri_mut() = req.uri().clone();
    *whole.headers_mut() = req.headers().clone();
    whole.headers_mut().remove(RANGE);
    let answer = next.clone().run(req).await;
    let partial = answer.status() == StatusCode::PARTIAL_CONTENT;
    if partial && answer.headers().get(LAST_MODIFIED) != Some(&validator) {
        return next.run(whole).await;
    }
    answer
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), megaconn::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()
        .expect("LISTEN is host:port");
    let root = args.next().unwrap_or_else(|| ".".into());
    let uploads = PathBuf::from(args.next().unwrap_or_else(|| "uploads".into()));
    let chunk: usize = args.next().map_or(DEFAULT_CHUNK, |c| {
        c.parse()
            .ok()
            .filter(|&c| c > 0)
            .expect("CHUNK is a number of bytes, at least 1")
    });
    std::fs::create_dir_all(&uploads).expect("the uploads directory");
    // No redirect of `/files/dir` to `dir/`: under `nest_service` it
    // drops the prefix (tower-http 0.6: `Location: /dir/`, a 404).
    let files = ServeDir::new(root)
        .append_index_html_on_directories(false)
        .precompressed_gzip()
        .precompressed_br()
        .with_buf_chunk_size(chunk);
    let app = Router::new()
        .route("/upload/{name}", put(upload))
        .with_state(uploads)
        .nest_service("/files", files)
        .layer(middleware::from_fn(if_range));
    let server = megaconn::Server::bind(listen)
        .max_body_bytes(MAX_UPLOAD)
        // Left as they are, on purpose: `write_timeout` off (Go's bounds
        // the whole response, and would cut every download longer than
        // it); `write_stall_timeout` 60 s closes a client that takes no
        // byte for that long (nginx's `send_timeout`), a slow one never;
        // `min_request_body_rate` 240 B/s and `idle_timeout` 60 s bound
        // uploads that crawl or stop.
        .shutdown_timeout(DRAIN)
        .listen()?;
    println!("serving http://{}/files/", server.local_addr());
    let summary = server
        .serve_with_shutdown(app, megaconn::shutdown_signal()?)
        .await?;
    println!("{summary:?}");
    Ok(())
}
