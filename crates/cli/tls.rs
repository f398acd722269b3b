//! `serve --tls-cert/--tls-key`, `--self-signed`, `--tls-listen` and the
//! client certificates' `--tls-client-ca/--tls-client-auth/--tls-client-crl`:
//! the server's TLS settings, and what SIGHUP reloads.
//!
//! Which listeners speak TLS: with `--tls-listen` (config `tls_listen`), those
//! addresses, next to the cleartext `--listen` ones; without it, a certificate
//! turns every `--listen` address into TLS.
//!
//! SIGHUP reads the certificate and key files again (and the client CA and
//! CRL files), and the config file's
//! handshake knobs ([`RELOADED_KEYS`]: `tls_max_handshakes` and
//! `tls_handshake_rate_per_ip`, so a bound can be changed under a flood
//! without a restart, and `tls_kx_groups`); a flag
//! still wins over the file, as at start. The other keys apply at start only:
//! a SIGHUP that finds one changed says so.

use std::net::SocketAddr;
use std::path::PathBuf;

use megaconn::{Builder, TlsConfig};

use crate::knobs;
use crate::UsageError;

/// The config file's keys SIGHUP applies (with the certificate files).
pub const RELOADED_KEYS: [&str; 3] = [
    "tls-max-handshakes",
    "tls-kx-groups",
    "tls-handshake-rate-per-ip",
];

/// Names a `--self-signed` certificate is valid for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The serving TLS configuration and where it came from, kept for SIGHUP.
#[derive(Debug, Clone)]
pub struct ServeTls {
    /// The live configuration (clones share it with the server).
    pub config: TlsConfig,
    /// The certificate chain and key files, read again on SIGHUP; `None`: a
    /// `--self-signed` certificate in memory, with nothing to read.
    pub files: Option<(PathBuf, PathBuf)>,
    /// `--tls-client-ca` (and `--tls-client-crl`), read again on SIGHUP.
    pub client_files: Option<(PathBuf, Option<PathBuf>)>,
    /// Where SIGHUP reads the handshake knobs again; `None`: no config file,
    /// they stay as the flags set them.
    pub knobs: Option<Reread>,
    /// Worker processes sharing the per-IP handshake rate.
    pub processes: usize,
}

/// The config file as `serve` started from it, and the flags over it.
#[derive(Debug, Clone)]
pub struct Reread {
    /// `--config`.
    pub file: PathBuf,
    /// Its values at start, to say which keys changed that SIGHUP does not
    /// apply.
    pub at_start: knobs::Values,
    /// The knobs given as flags: they win over the file.
    pub flags: knobs::Values,
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
    /// `--tcp-tls-listen` addresses are given (the library adds them, as
    /// TLS listeners): they need a certificate as `listen` does.
    pub framed: bool,
    /// `--tls-kx-groups`; `None`: the library's default.
    pub kx_groups: Option<&'a [megaconn::KxGroup]>,
    /// `--tls-max-handshakes` (0: unbounded); `None`: the library's default.
    pub max_handshakes: Option<usize>,
    /// `--tls-handshake-rate-per-ip`; `None`: no limit.
    pub handshake_rate_per_ip: Option<f64>,
    /// `--tls-client-ca`: client certificates verified against it.
    pub client_ca: Option<&'a PathBuf>,
    /// `--tls-client-auth`: `Some(true)` optional, `Some(false)` required;
    /// `None`: not given (required).
    pub client_auth_optional: Option<bool>,
    /// `--tls-client-crl`.
    pub client_crl: Option<&'a PathBuf>,
    /// Worker processes sharing the rate (1: this process alone).
    pub processes: usize,
    /// The config file and flags, for SIGHUP to read the knobs again.
    pub knobs: Option<Reread>,
}

/// Applies the TLS settings to `b`: a certificate and key from files, or a
/// throwaway self-signed certificate, or nothing (cleartext). Returns what
/// SIGHUP should reload.
pub fn apply(b: Builder, args: TlsArgs<'_>) -> Result<(Builder, Option<ServeTls>), UsageError> {
    let (tls, files) = match (args.cert, args.key, args.self_signed) {
        (None, None, false) if args.listen.is_empty() && !args.framed => {
            // A TLS knob with no TLS to apply it to would be dropped without
            // a word: the operator believes a bound that is not there.
            let given: Vec<&str> = [
                (args.kx_groups.is_some(), "--tls-kx-groups (tls_kx_groups)"),
                (
                    args.max_handshakes.is_some(),
                    "--tls-max-handshakes (tls_max_handshakes)",
                ),
                (
                    args.handshake_rate_per_ip.is_some(),
                    "--tls-handshake-rate-per-ip (tls_handshake_rate_per_ip)",
                ),
                (args.client_ca.is_some(), "--tls-client-ca (tls_client_ca)"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect();
            if !given.is_empty() {
                let (verb, it) = if given.len() > 1 {
                    ("apply", "them")
                } else {
                    ("applies", "it")
                };
                return Err(UsageError(format!(
                    "{} {verb} to TLS listeners, and none is configured: give --tls-cert and --tls-key (or --self-signed), or drop {it}",
                    given.join(" and ")
                )));
            }
            return Ok((b, None));
        }
        (None, None, false) => {
            let flag = if args.listen.is_empty() {
                "--tcp-tls-listen (tcp_tls_listen)"
            } else {
                "--tls-listen (tls_listen)"
            };
            return Err(UsageError(format!(
                "{flag} needs a certificate: give --tls-cert and --tls-key, or --self-signed"
            )));
        }
        (Some(_), _, true) | (_, Some(_), true) => {
            return Err(UsageError(
                "--self-signed and --tls-cert/--tls-key exclude each other".into(),
            ))
        }
        (Some(cert), Some(key), false) => (
            TlsConfig::from_pem_files(cert, key).map_err(|e| UsageError(e.to_string()))?,
            Some((cert.clone(), key.clone())),
        ),
        (Some(_), None, false) => return Err(UsageError("--tls-cert needs --tls-key".into())),
        (None, Some(_), false) => return Err(UsageError("--tls-key needs --tls-cert".into())),
        (None, None, true) => (self_signed_config()?, None),
    };
    let (tls, client_files) = client_auth(tls, &args)?;
    let processes = args.processes.max(1);
    let tls = handshake_knobs(
        tls,
        HandshakeKnobs {
            kx_groups: args.kx_groups,
            max_handshakes: args.max_handshakes,
            rate_per_ip: args.handshake_rate_per_ip,
        },
        processes,
    )
    .map_err(|e| UsageError(e.to_string()))?;
    let serve_tls = ServeTls {
        config: tls.clone(),
        files,
        client_files,
        knobs: args.knobs,
        processes,
    };
    let mut b = b.tls(tls);
    for &addr in args.listen {
        b = b.listen_tls_on(addr);
    }
    Ok((b, Some(serve_tls)))
}

/// Turns on client certificates (`--tls-client-ca`, with `--tls-client-auth`
/// and `--tls-client-crl`): the configuration, and the files SIGHUP reads
/// again. The two others without a CA are refused, not dropped.
#[allow(clippy::type_complexity)]
fn client_auth(
    tls: TlsConfig,
    args: &TlsArgs<'_>,
) -> Result<(TlsConfig, Option<(PathBuf, Option<PathBuf>)>), UsageError> {
    let Some(ca) = args.client_ca else {
        let orphan = [
            (
                args.client_auth_optional.is_some(),
                "--tls-client-auth (tls_client_auth)",
            ),
            (
                args.client_crl.is_some(),
                "--tls-client-crl (tls_client_crl)",
            ),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect::<Vec<_>>();
        if !orphan.is_empty() {
            return Err(UsageError(format!(
                "{} needs --tls-client-ca (tls_client_ca): the CA certificates client certificates must chain to",
                orphan.join(" and ")
            )));
        }
        return Ok((tls, None));
    };
    let mut roots = megaconn::ClientCa::from_pem_file(ca);
    if let Some(crl) = args.client_crl {
        roots = roots.with_crl_pem_file(crl);
    }
    let auth = match args.client_auth_optional {
        Some(true) => megaconn::ClientAuth::Optional(roots),
        _ => megaconn::ClientAuth::Required(roots),
    };
    let tls = tls
        .client_auth(auth)
        .map_err(|e| UsageError(format!("--tls-client-ca: {e}")))?;
    Ok((tls, Some((ca.clone(), args.client_crl.cloned()))))
}

/// The knobs SIGHUP applies again; `None`: the library's default.
struct HandshakeKnobs<'a> {
    kx_groups: Option<&'a [megaconn::KxGroup]>,
    max_handshakes: Option<usize>,
    rate_per_ip: Option<f64>,
}

/// Sets the handshake knobs on `tls` (live, on a running server's): the
/// library's defaults where `None`; the per-IP rate is this process's
/// share of `processes`.
fn handshake_knobs(
    tls: TlsConfig,
    knobs: HandshakeKnobs<'_>,
    processes: usize,
) -> Result<TlsConfig, megaconn::TlsError> {
    Ok(tls
        .kx_groups(knobs.kx_groups.unwrap_or(&megaconn::DEFAULT_TLS_KX_GROUPS))?
        .max_handshakes_in_flight(Some(
            knobs
                .max_handshakes
                .unwrap_or(megaconn::DEFAULT_TLS_MAX_HANDSHAKES_IN_FLIGHT),
        ))
        .handshake_rate_per_ip(knobs.rate_per_ip.map(|r| r / processes as f64)))
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

/// SIGHUP: reads the certificate and key files again, then the config
/// file's handshake knobs ([`RELOADED_KEYS`]). New connections get the new
/// certificate, open ones keep theirs; the knobs apply at once. Each part
/// that fails (a bad file) leaves what it would change as it was and the
/// log says why; the other part applies.
pub fn reload_on_sighup(tls: Option<&ServeTls>) {
    let Some(tls) = tls else {
        tracing::info!("SIGHUP: no TLS listener, nothing to reload");
        return;
    };
    match (&tls.files, &tls.client_files) {
        (None, None) => {
            tracing::info!("SIGHUP: the --self-signed certificate has no files to reload")
        }
        (files, client_files) => {
            let what = match (files, client_files) {
                (Some(_), None) => "TLS certificate and key reloaded",
                (Some(_), Some(_)) => "TLS certificate and key reloaded, and the client CA",
                _ => "TLS client CA reloaded (the --self-signed certificate has no files)",
            };
            let name = |p: Option<&PathBuf>| p.map_or("-".into(), |p| p.display().to_string());
            match tls.config.reload() {
                Ok(()) => tracing::info!(
                    cert = %name(files.as_ref().map(|(c, _)| c)),
                    key = %name(files.as_ref().map(|(_, k)| k)),
                    client_ca = %name(client_files.as_ref().map(|(c, _)| c)),
                    client_crl = %name(client_files.as_ref().and_then(|(_, r)| r.as_ref())),
                    "SIGHUP: {what}; new connections use them, open ones keep theirs"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: TLS reload failed, still serving the previous certificate and client CA; fix the files and send SIGHUP again"
                ),
            }
        }
    }
    match &tls.knobs {
        None => tracing::debug!(
            "SIGHUP: no config file; the TLS handshake knobs stay as the flags set them"
        ),
        Some(reread) => match reread_knobs(&tls.config, reread, tls.processes) {
            Ok(applied) => tracing::info!(
                file = %reread.file.display(),
                "SIGHUP: {applied}"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: the config file was not applied; the TLS handshake knobs are unchanged. Fix it and send SIGHUP again"
            ),
        },
    }
}

/// Reads `reread`'s config file again and sets its handshake knobs (flags
/// over file over defaults) on `config`; says what applies now, and which
/// changed keys do not.
fn reread_knobs(
    config: &TlsConfig,
    reread: &Reread,
    processes: usize,
) -> Result<String, UsageError> {
    // Read and applied as at start, so an error is worded alike ("key `k`
    // in config file PATH: ...").
    let file = crate::serve::load_config(&reread.file)?;
    let settings =
        knobs::apply_from(&reread.flags, &file, Some(&reread.file)).map_err(UsageError)?;
    handshake_knobs(
        config.clone(),
        HandshakeKnobs {
            kx_groups: settings.tls_kx_groups.as_deref(),
            max_handshakes: settings.tls_max_handshakes,
            rate_per_ip: settings.tls_handshake_rate_per_ip,
        },
        processes,
    )
    .map_err(|e| UsageError(e.to_string()))?;
    let mut applied = format!(
        "TLS handshake knobs applied: tls_max_handshakes = {}, tls_handshake_rate_per_ip = {}, tls_kx_groups = {}",
        settings
            .tls_max_handshakes
            .unwrap_or(megaconn::DEFAULT_TLS_MAX_HANDSHAKES_IN_FLIGHT),
        settings
            .tls_handshake_rate_per_ip
            .map_or("unlimited".to_string(), |r| r.to_string()),
        settings
            .tls_kx_groups
            .as_deref()
            .unwrap_or(&megaconn::DEFAULT_TLS_KX_GROUPS)
            .iter()
            .map(|g| g.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    let overridden: Vec<String> = RELOADED_KEYS
        .iter()
        .filter(|k| reread.flags.contains_key(*k))
        .map(|k| format!("--{k}"))
        .collect();
    if !overridden.is_empty() {
        applied += &format!(
            " ({} given as a flag wins over the file)",
            overridden.join(", ")
        );
    }
    let start_only: Vec<&str> = reread
        .at_start
        .keys()
        .chain(file.keys())
        .filter(|k| !RELOADED_KEYS.contains(k) && reread.at_start.get(*k) != file.get(*k))
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !start_only.is_empty() {
        applied += &format!(
            "; changed keys that apply at start only, not now: {} (restart, or `serve --upgrade`, to apply them)",
            start_only
                .iter()
                .map(|k| k.replace('-', "_"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(applied)
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
        assert!(matches!(tls, Some(ServeTls { files: None, .. })));
    }

    #[test]
    fn handshake_knobs_need_a_certificate() {
        let knobs = |self_signed| {
            apply(
                Builder::default(),
                TlsArgs {
                    self_signed,
                    kx_groups: Some(&[megaconn::KxGroup::X25519]),
                    max_handshakes: Some(64),
                    ..TlsArgs::default()
                },
            )
        };
        let err = knobs(false).unwrap_err();
        assert!(
            err.0.contains("--tls-kx-groups") && err.0.contains("--tls-max-handshakes"),
            "{}",
            err.0
        );
        assert!(knobs(true).is_ok());
    }

    /// `--tls-client-ca` needs TLS; `--tls-client-auth` and
    /// `--tls-client-crl` need `--tls-client-ca`; an unreadable CA file is
    /// an error naming the flag and the file.
    #[test]
    fn client_ca_flags_combine_or_are_refused() {
        let ca = PathBuf::from("/nonexistent/devices-ca.pem");
        let with = |self_signed, client_ca, optional: Option<bool>, crl| {
            apply(
                Builder::default(),
                TlsArgs {
                    self_signed,
                    client_ca,
                    client_auth_optional: optional,
                    client_crl: crl,
                    ..TlsArgs::default()
                },
            )
        };
        let err = with(false, Some(&ca), None, None).unwrap_err();
        assert!(err.0.contains("--tls-client-ca"), "{}", err.0);
        let err = with(true, None, Some(true), Some(&ca)).unwrap_err();
        assert!(
            err.0.contains("--tls-client-auth") && err.0.contains("--tls-client-crl"),
            "{}",
            err.0
        );
        let err = with(true, Some(&ca), None, None).unwrap_err();
        assert!(
            err.0.contains("--tls-client-ca") && err.0.contains("devices-ca.pem"),
            "{}",
            err.0
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let root = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        std::fs::write(&path, root.cert.pem()).unwrap();
        let (b, tls) = with(true, Some(&path), Some(true), None).unwrap();
        assert!(format!("{b:?}").contains("Optional"), "{b:?}");
        assert_eq!(tls.unwrap().client_files, Some((path.clone(), None)));
        let (b, _) = with(true, Some(&path), None, None).unwrap();
        assert!(format!("{b:?}").contains("Required"), "{b:?}");
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
