//! tokio-framed: the usual tokio framed TCP server, a peer for
//! `bench/framed.sh`. One task per connection on a current-thread runtime,
//! `Framed<TcpStream, LengthDelimitedCodec>` (4-byte big-endian header),
//! broadcast through a `tokio::sync::broadcast` channel every task listens
//! to. `PING` is answered `PONG`; `PUB * <text>` broadcasts `<text>` to
//! every connection; any other frame is echoed.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

async fn serve(stream: TcpStream, all: broadcast::Sender<Bytes>) {
    let mut pushed = all.subscribe();
    let mut framed = Framed::new(stream, LengthDelimitedCodec::new());
    loop {
        tokio::select! {
            frame = framed.next() => {
                let Some(Ok(frame)) = frame else { return };
                let reply = if &frame[..] == b"PING" {
                    Bytes::from_static(b"PONG")
                } else if let Some(text) = frame.strip_prefix(b"PUB * ") {
                    let _ = all.send(Bytes::copy_from_slice(text));
                    continue;
                } else {
                    frame.freeze()
                };
                if framed.send(reply).await.is_err() {
                    return;
                }
            }
            message = pushed.recv() => match message {
                Ok(message) => {
                    if framed.send(message).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("tokio-framed listening on {addr}");
        let (all, _) = broadcast::channel(16);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::task::spawn(serve(stream, all.clone()));
        }
    })
}
