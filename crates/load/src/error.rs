//! The error type of the load generator: every message says what went wrong and
//! what to do about it.

use std::path::PathBuf;

/// Why a `load` or `hold` run could not start or could not finish writing its report.
///
/// The underlying I/O error of a variant is part of its message (field `cause`)
/// rather than a `source()`, so `anyhow`'s `{:#}` does not print it twice.
///
/// Failures *during* a run (refused connections, timeouts, bad responses) are not
/// errors: they are counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A command-line value could not be understood.
    #[error("invalid {what} {value:?}: {hint}")]
    InvalidArg {
        /// Which argument.
        what: &'static str,
        /// The value given.
        value: String,
        /// What would be accepted.
        hint: String,
    },
    /// Neither `--duration` nor `--requests` was given to `load`.
    #[error("refusing to run unbounded: give --duration (e.g. -d 10s) and/or --requests (e.g. -n 100000)")]
    Unbounded,
    /// The target did not accept a test connection before the run.
    #[error("cannot reach {addr}: {cause}; is the server running and listening there?")]
    Unreachable {
        /// The target address.
        addr: std::net::SocketAddr,
        /// The connect error.
        cause: std::io::Error,
    },
    /// The probe TLS handshake before the run failed.
    #[error("TLS handshake with {addr} failed: {cause}; {hint}")]
    Tls {
        /// The target address.
        addr: std::net::SocketAddr,
        /// What rustls or the socket reported.
        cause: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A `--source` address cannot be bound on this machine.
    #[error("source address {addr} is not usable on this machine ({cause}); pick addresses configured on a local interface (any of 127.0.0.0/8 works on loopback)")]
    BadSource {
        /// The source address.
        addr: std::net::IpAddr,
        /// The bind error.
        cause: std::io::Error,
    },
    /// More connections were asked for than the sources' port space allows.
    #[error("{connections} connections to one destination need at least {needed} source addresses, but only {sources} given ({ports_per_source} local ports each, see /proc/sys/net/ipv4/ip_local_port_range); add addresses with --source 127.0.0.2-127.0.0.N or lower -c")]
    PortSpace {
        /// Requested connections.
        connections: u64,
        /// Source addresses given.
        sources: usize,
        /// Ephemeral ports per source address.
        ports_per_source: u64,
        /// Source addresses needed.
        needed: u64,
    },
    /// More connections per process than the file-descriptor limit allows.
    #[error("{per_process} connections per process exceed the open-file limit of {limit} (RLIMIT_NOFILE, with headroom); use more --processes (at least {suggested}) or lower -c")]
    TooManyPerProcess {
        /// Connections each process would hold.
        per_process: u64,
        /// Usable descriptors per process.
        limit: u64,
        /// A process count that would fit.
        suggested: u64,
    },
    /// A child process failed to start or died before reporting.
    #[error("child process {index}: {message}")]
    Child {
        /// The child's index.
        index: usize,
        /// What happened.
        message: String,
    },
    /// Writing a report or plot file failed.
    #[error("cannot write {path}: {cause}; check the directory exists and is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// An operating-system call needed for setup failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        cause: std::io::Error,
    },
}

impl LoadError {
    /// Shorthand for [`LoadError::InvalidArg`].
    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        LoadError::InvalidArg {
            what,
            value: value.into(),
            hint: hint.into(),
        }
    }

    /// Shorthand for [`LoadError::Io`].
    pub(crate) fn io(what: impl Into<String>, cause: std::io::Error) -> Self {
        LoadError::Io {
            what: what.into(),
            cause,
        }
    }
}
