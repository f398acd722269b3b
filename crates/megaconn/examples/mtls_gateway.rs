//! An IoT gateway where each device authenticates with its own certificate
//! (mutual TLS): a framed TCP listener over TLS (length-prefixed frames)
//! whose handler knows the device by its certificate's common name, and an
//! HTTPS route that says who asked.
//!
//! ```text
//! cargo run -p megaconn --example mtls_gateway -- \
//!   --cert server.pem --key server-key.pem --client-ca devices-ca.pem \
//!   [--listen 127.0.0.1:8883] [--https 127.0.0.1:8443] [--optional]
//! curl --cacert server-ca.pem --cert device.pem --key device-key.pem https://localhost:8443/whoami
//! ```
//!
//! A device without a certificate signed by `devices-ca.pem` is refused
//! in the handshake (rustls' alert: `certificate_required`, `unknown_ca`,
//! ...), counted in `megaconn_tls_handshakes_total{outcome="client_cert"}`
//! and logged; `--optional` lets one without any in. `kill -HUP` is not
//! wired here: call `TlsConfig::reload` to read the CA file again.

use bytes::Bytes;
use megaconn::{ClientAuth, ClientCa, FramedHandler, Framing, PeerCertificates, Server, Session};

/// Answers each frame with the device's name, and remembers it in its
/// state (read once, at the connection's open: the certificate does not
/// change while the connection lives).
struct Devices;

impl FramedHandler for Devices {
    type State = Option<String>;

    fn on_open(&self, device: &mut Option<String>, session: &Session) {
        *device = session
            .peer_certificates()
            .and_then(PeerCertificates::common_name);
        tracing::info!(device = ?device, id = ?session.id(), "device connected");
    }

    async fn on_message(
        &self,
        device: &mut Option<String>,
        frame: Bytes,
        _: &Session,
    ) -> Option<Bytes> {
        let name = device.as_deref().unwrap_or("anonymous");
        Some(Bytes::from(format!("{name}: {} bytes", frame.len())))
    }
}

/// `GET /whoami`: the client certificate's CN, from the request extension.
async fn whoami(peer: Option<axum::Extension<PeerCertificates>>) -> String {
    match peer.and_then(|axum::Extension(p)| p.common_name()) {
        Some(cn) => format!("hello, {cn}\n"),
        None => "hello, anonymous\n".into(),
    }
}

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.next()?;
    args.next()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cert = arg("--cert").ok_or("--cert FILE is required")?;
    let key = arg("--key").ok_or("--key FILE is required")?;
    let ca = ClientCa::from_pem_file(arg("--client-ca").ok_or("--client-ca FILE is required")?);
    let auth = match std::env::args().any(|a| a == "--optional") {
        true => ClientAuth::Optional(ca),
        false => ClientAuth::Required(ca),
    };
    let tls = megaconn::TlsConfig::from_pem_files(cert, key)?.client_auth(auth)?;
    let framed = arg("--listen").unwrap_or_else(|| "127.0.0.1:8883".into());
    let https = arg("--https").unwrap_or_else(|| "127.0.0.1:8443".into());
    let app = axum::Router::new().route("/whoami", axum::routing::get(whoami));
    Server::builder()
        .tls(tls)
        .listen_tls_on(https.parse()?)
        .listen_framed_tls_on(framed.parse()?, Framing::length_prefixed(4))
        .listen()?
        .framed(Devices)
        .serve(app)
        .await?;
    Ok(())
}
