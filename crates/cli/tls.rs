//! `serve --tls-cert/--tls-key`, `--self-signed` and `--tls-listen`: the
//! server's TLS settings, and what SIGHUP reloads.
//!
//! Which listeners speak TLS: with `--tls-listen` (config `tls_listen`), those
//! addresses, next to the cleartext `--listen` ones; without it, a certificate
//! turns every `--listen` address into TLS.

use std::net::SocketAddr;
use std::path::PathBuf;

use megaconn::{Builder, TlsConfig};

use crate::UsageError;

/// Names a `--self-signed` certificate is valid for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Where the serving certificate came from, kept for SIGHUP.
#[derive(Debug, Clone)]
pub enum ServeTls {
    /// PEM files, read again on SIGHUP.
    Files {
        /// The live configuration (clones share it with the server).
        config: TlsConfig,
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// A throwaway certificate in memory: nothing to reload.
    SelfSigned,
}

/// The TLS settings of `serve`, from flags or the config file.
#[derive(Debug, Default)]
pub struct TlsArgs<'a> {
    /// Certificate chain file.
    pub cert: Option<&'a PathBuf>,
    /// Private key file.
    pub key: Option<&'a PathBuf>,
    /// Make a throwaway certificate instead.
    pub self_signed: bool,
    /// Addresses served over TLS next to the cleartext ones; empty: a
    /// certificate applies to every listener.
    pub listen: &'a [SocketAddr],
    /// `--tls-kx-groups`; `None`: the library's default.
    pub kx_groups: Option<&'a [megaconn::KxGroup]>,
    /// `--tls-max-handshakes` (0: unbounded); `None`: the library's default.
    pub max_handshakes: Option<usize>,
}

/// Applies the TLS settings to `b`: a certificate and key from files, or a
/// throwaway self-signed certificate, or nothing (cleartext). Returns what
/// SIGHUP should reload.
pub fn apply(b: Builder, args: TlsArgs<'_>) -> Result<(Builder, Option<ServeTls>), UsageError> {
    let (tls, serve_tls) = match (args.cert, args.key, args.self_signed) {
        (None, None, false) if args.listen.is_empty() => {
            // A TLS knob with no TLS to apply it to would be dropped without
            // a word: the operator believes a bound that is not there.
            let given: Vec<&str> = [
                (args.kx_groups.is_some(), "--tls-kx-groups (tls_kx_groups)"),
                (
                    args.max_handshakes.is_some(),
                    "--tls-max-handshakes (tls_max_handshakes)",
                ),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect();
            if !given.is_empty() {
                return Err(UsageError(format!(
                    "{} applies to TLS listeners, and none is configured: give --tls-cert and --tls-key (or --self-signed), or drop it",
                    given.join(" and ")
                )));
            }
            return Ok((b, None));
        }
        (None, None, false) => {
            return Err(UsageError(
                "--tls-listen (tls_listen) needs a certificate: give --tls-cert and --tls-key, or --self-signed".into(),
            ))
        }
        (Some(_), _, true) | (_, Some(_), true) => {
            return Err(UsageError(
                "--self-signed and --tls-cert/--tls-key exclude each other".into(),
            ))
        }
        (Some(cert), Some(key), false) => {
            let tls =
                TlsConfig::from_pem_files(cert, key).map_err(|e| UsageError(e.to_string()))?;
            let serve_tls = ServeTls::Files {
                config: tls.clone(),
                cert: cert.clone(),
                key: key.clone(),
            };
            (tls, serve_tls)
        }
        (Some(_), None, false) => return Err(UsageError("--tls-cert needs --tls-key".into())),
        (None, Some(_), false) => return Err(UsageError("--tls-key needs --tls-cert".into())),
        (None, None, true) => (self_signed_config()?, ServeTls::SelfSigned),
    };
    let tls = match args.kx_groups {
        Some(groups) => tls
            .kx_groups(groups)
            .map_err(|e| UsageError(e.to_string()))?,
        None => tls,
    };
    let tls = match args.max_handshakes {
        Some(n) => tls.max_handshakes_in_flight(Some(n)),
        None => tls,
    };
    let mut b = b.tls(tls);
    for &addr in args.listen {
        b = b.listen_tls_on(addr);
    }
    Ok((b, Some(serve_tls)))
}

/// A fresh self-signed certificate for [`SELF_SIGNED_NAMES`].
pub fn self_signed_config() -> Result<TlsConfig, UsageError> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| UsageError(format!("cannot generate a self-signed certificate: {e}")))?;
    TlsConfig::from_pem(
        generated.cert.pem().as_bytes(),
        generated.key_pair.serialize_pem().as_bytes(),
    )
    .map_err(|e| UsageError(e.to_string()))
}

/// SIGHUP: reads the certificate and key files again. New connections get the
/// new certificate, open ones keep theirs; on any error the old certificate
/// stays live and the log says why.
pub fn reload_on_sighup(tls: Option<&ServeTls>) {
    match tls {
        None => tracing::info!("SIGHUP: no TLS listener, nothing to reload"),
        Some(ServeTls::SelfSigned) => {
            tracing::info!("SIGHUP: the --self-signed certificate has no files to reload")
        }
        Some(ServeTls::Files { config, cert, key }) => match config.reload() {
            Ok(()) => tracing::info!(
                cert = %cert.display(),
                key = %key.display(),
                "SIGHUP: TLS certificate and key reloaded; new connections use them, open ones keep theirs"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: TLS reload failed, still serving the previous certificate; fix the files and send SIGHUP again"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_flags(
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        self_signed: bool,
        listen: &[SocketAddr],
    ) -> Result<(Builder, Option<ServeTls>), UsageError> {
        apply(
            Builder::default(),
            TlsArgs {
                cert,
                key,
                self_signed,
                listen,
                ..TlsArgs::default()
            },
        )
    }

    #[test]
    fn flags_combine_or_are_refused() {
        let p = PathBuf::from("x.pem");
        assert!(apply_flags(None, None, false, &[]).unwrap().1.is_none());
        assert!(apply_flags(Some(&p), None, false, &[]).is_err());
        assert!(apply_flags(None, Some(&p), false, &[]).is_err());
        assert!(apply_flags(Some(&p), Some(&p), true, &[]).is_err());
        let err = apply_flags(Some(&p), Some(&p), false, &[]).unwrap_err();
        assert!(err.0.contains("x.pem"), "{}", err.0);
        let (b, tls) = apply_flags(None, None, true, &[]).unwrap();
        assert!(format!("{b:?}").contains("TlsConfig"));
        assert!(matches!(tls, Some(ServeTls::SelfSigned)));
    }

    #[test]
    fn tls_listen_needs_a_certificate() {
        let addr: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let err = apply_flags(None, None, false, &[addr]).unwrap_err();
        assert!(err.0.contains("--tls-cert"), "{}", err.0);
        let (b, _) = apply_flags(None, None, true, &[addr]).unwrap();
        assert!(format!("{b:?}").contains("127.0.0.1:8443"));
    }
}
