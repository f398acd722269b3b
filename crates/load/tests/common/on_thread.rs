//! A test server's accept loop (or a megaconn server's `serve`) on a
//! thread of its own, in a current-thread tokio runtime, so that it serves
//! whatever the test does meanwhile (block on a child process, run `load`
//! in its own runtime). The load generator's
//! test servers run on it, and so do the command-line tests' (their
//! `tests/common` includes this file).

use std::future::Future;
use std::net::SocketAddr;

/// Serves `listener` on a thread of its own: each connection accepted is
/// handed to `serve` (called in the accept loop, so what it does before its
/// future is done in the order of the accepts), whose future runs on a task
/// of its own. A failed accept is passed over. The thread lives as long as
/// the test process, as the servers of these tests do.
pub fn serve_on_thread<F, Fut>(listener: std::net::TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    listener.set_nonblocking(true).unwrap();
    run_on_thread(move || async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(sock, peer));
        }
    });
}

/// Runs the future `make` makes (made on the new thread: it need not be
/// `Send`, as a megaconn server's `serve` is not) on a thread of its own,
/// in a current-thread tokio runtime, until it ends or the test process
/// does: a server that serves whatever the test does meanwhile.
pub fn run_on_thread<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(make());
    });
}
