//! `serve --tls-cert/--tls-key` and `--self-signed`: the server's TLS settings.

use std::path::PathBuf;

use megaconn::{Builder, TlsConfig};

use crate::UsageError;

/// Names a `--self-signed` certificate is valid for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Applies the TLS flags to `b`: a certificate and key from files, or a
/// throwaway self-signed certificate, or nothing (cleartext).
pub fn apply(
    b: Builder,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    self_signed: bool,
) -> Result<Builder, UsageError> {
    match (cert, key, self_signed) {
        (None, None, false) => Ok(b),
        (Some(_), _, true) | (_, Some(_), true) => Err(UsageError(
            "--self-signed and --tls-cert/--tls-key exclude each other".into(),
        )),
        (Some(cert), Some(key), false) => {
            let tls =
                TlsConfig::from_pem_files(cert, key).map_err(|e| UsageError(e.to_string()))?;
            Ok(b.tls(tls))
        }
        (Some(_), None, false) => Err(UsageError("--tls-cert needs --tls-key".into())),
        (None, Some(_), false) => Err(UsageError("--tls-key needs --tls-cert".into())),
        (None, None, true) => Ok(b.tls(self_signed_config()?)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_combine_or_are_refused() {
        let p = PathBuf::from("x.pem");
        assert!(apply(Builder::default(), None, None, false).is_ok());
        assert!(apply(Builder::default(), Some(&p), None, false).is_err());
        assert!(apply(Builder::default(), None, Some(&p), false).is_err());
        assert!(apply(Builder::default(), Some(&p), Some(&p), true).is_err());
        let err = apply(Builder::default(), Some(&p), Some(&p), false).unwrap_err();
        assert!(err.0.contains("x.pem"), "{}", err.0);
        let b = apply(Builder::default(), None, None, true).unwrap();
        assert!(format!("{b:?}").contains("TlsConfig"));
    }
}
