//! TLS on rustls (the `ring` provider): certificates from PEM, SNI, ALPN
//! (`h2`, `http/1.1`), session resumption, a handshake timeout, certificate
//! reload without a restart, and client certificates (mutual TLS:
//! [`ClientAuth`], verified by rustls' `WebPkiClientVerifier`; the chain a
//! client presented reaches handlers as [`PeerCertificates`]).
//!
//! The dispatcher (`server/dispatch.rs`) runs [`handshake`] on connections
//! of TLS listeners and picks the protocol by ALPN.
//!
//! [`TlsConfig`] is a handle: clones share one live rustls `ServerConfig`,
//! which [`TlsConfig::reload`] replaces. Each handshake takes the config live
//! when it starts, so a reload affects new connections only; open ones keep
//! the certificate they negotiated. The handshake-flood bounds are live
//! too: set on a clone, the bound on handshakes in flight resizes every
//! worker's [`HandshakeGate`] at once, and the per-IP handshake rate
//! ([`TlsConfig::handshake_rate_per_ip`], its buckets in `admission.rs`)
//! applies from the next accept.
//!
//! The stream itself is `tls_io.rs`: rustls' unbuffered API, with record
//! buffers from the worker's pool, so an idle HTTPS/1.1 connection parks like
//! a cleartext one and keeps only its session (keys and traffic state) in
//! the worker's table of parked sessions (`bench/IDLE-TLS.md`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::Duration;

use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

use crate::conn::admission::{Admitted, OverIpRate, PerIpRate};
use crate::conn::client_auth::{ClientAuth, ClientAuthFailure, LoadedClientAuth};
use crate::conn::config::Config;
use crate::conn::context::WorkerContext;
use crate::conn::tls_io::TlsIo;
use crate::error::TlsFailure;
use crate::observe::close::{client_left, CloseReason};
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::{incr, HandshakeOutcome, TlsStats};

/// Default time a client has to complete the TLS handshake after connecting.
/// Ten seconds, like `read_header_timeout`: a real client needs milliseconds.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sessions kept for stateful resumption (TLS 1.2 session IDs; TLS 1.3 when
/// tickets are off). About 200 bytes each.
pub const TLS_SESSION_CACHE_SIZE: usize = 4096;

/// Handshakes a worker works on at once by default
/// ([`TlsConfig::max_handshakes_in_flight`]): at ~0.2 ms of CPU each (X25519
/// and an ECDSA P-256 signature), a request arriving behind a full set waits
/// a few ms for the worker, where an unbounded flood of ClientHellos made it
/// wait seconds. Measured under two senders replaying an X25519 ClientHello
/// on a loaded two-core machine, an honest cleartext GET's p50: 4.4–4.9 s
/// unbounded, 47–56 ms at 32, 25 ms at 16, 16 ms at 8, with no fewer
/// handshakes done per second at the lower bounds.
pub const DEFAULT_TLS_MAX_HANDSHAKES_IN_FLIGHT: usize = 16;

/// Key-exchange groups offered by default: X25519 and P-256, what every
/// browser and TLS library offers. P-384 is left out: its key exchange costs
/// the server 4–5 times P-256's (~1 ms a handshake against ~0.2 ms, measured
/// replaying one ClientHello), so a client that offers only P-384 could make
/// each of its handshakes five times dearer for no client's benefit.
pub const DEFAULT_TLS_KX_GROUPS: [KxGroup; 2] = [KxGroup::X25519, KxGroup::P256];

/// A key-exchange group for TLS handshakes ([`TlsConfig::kx_groups`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KxGroup {
    /// X25519 (`x25519`): the cheapest, and every client's first choice.
    X25519,
    /// NIST P-256 (`p256`, `secp256r1`).
    P256,
    /// NIST P-384 (`p384`, `secp384r1`): 4–5 times P-256's cost to the
    /// server; off by default.
    P384,
}

impl KxGroup {
    /// Its name in settings and `--tls-kx-groups`.
    pub fn name(self) -> &'static str {
        match self {
            KxGroup::X25519 => "x25519",
            KxGroup::P256 => "p256",
            KxGroup::P384 => "p384",
        }
    }

    fn ring(self) -> &'static dyn rustls::crypto::SupportedKxGroup {
        use rustls::crypto::ring::kx_group;
        match self {
            KxGroup::X25519 => kx_group::X25519,
            KxGroup::P256 => kx_group::SECP256R1,
            KxGroup::P384 => kx_group::SECP384R1,
        }
    }
}

impl std::str::FromStr for KxGroup {
    type Err = TlsError;

    /// `x25519`, `p256` (or `secp256r1`), `p384` (or `secp384r1`), in any case.
    fn from_str(s: &str) -> Result<KxGroup, TlsError> {
        match s.to_ascii_lowercase().as_str() {
            "x25519" => Ok(KxGroup::X25519),
            "p256" | "p-256" | "secp256r1" => Ok(KxGroup::P256),
            "p384" | "p-384" | "secp384r1" => Ok(KxGroup::P384),
            _ => Err(TlsError::new(format!(
                "unknown key-exchange group {s:?} (known: x25519, p256, p384)"
            ))),
        }
    }
}

/// Why a TLS configuration could not be built (or reloaded: then nothing
/// changed). Its text says what was wrong and where; [`is_bad_crl`](TlsError::is_bad_crl)
/// tells a client CA's revocation list refused apart.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    message: String,
    bad_crl: bool,
}

impl TlsError {
    pub(crate) fn new(message: String) -> TlsError {
        TlsError {
            message,
            bad_crl: false,
        }
    }

    /// An error about a certificate revocation list given to
    /// [`ClientCa::with_crl_pem_file`](crate::ClientCa::with_crl_pem_file)
    /// (or `with_crl_pem`): one that does not read as a CRL, names a client
    /// CA root as its issuer but is not signed by it, or whose root has a
    /// `KeyUsage` without `cRLSign` (an expired one is only a warning). The server's own list, not a client's
    /// fault: refused when configured or reloaded, never found out
    /// handshake by handshake. The error says what to do.
    pub fn is_bad_crl(&self) -> bool {
        self.bad_crl
    }

    pub(crate) fn bad_crl(message: String) -> TlsError {
        TlsError {
            message,
            bad_crl: true,
        }
    }
}

/// Where a certificate and its key come from.
#[derive(Clone)]
enum Source {
    Files { cert: PathBuf, key: PathBuf },
    Pem { cert: Vec<u8>, key: Vec<u8> },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Files { cert, key } => write!(f, "{} + {}", cert.display(), key.display()),
            Source::Pem { .. } => f.write_str("PEM in memory"),
        }
    }
}

/// One certificate: for SNI `name`, or the default (`None`).
#[derive(Clone, Debug)]
struct Entry {
    name: Option<String>,
    source: Source,
    key: Arc<CertifiedKey>,
}

#[derive(Debug, Clone)]
struct Settings {
    entries: Vec<Entry>,
    alpn: Vec<Vec<u8>>,
    handshake_timeout: Option<Duration>,
    tickets: bool,
    kx_groups: Vec<KxGroup>,
    max_handshakes_in_flight: Option<usize>,
    /// Whether clients are asked for certificates ([`TlsConfig::client_auth`]).
    client_auth: ClientAuth,
    /// `client_auth` read and made into rustls' verifier (`None`: off).
    client_verifier: Option<LoadedClientAuth>,
    /// Where resumed sessions come from, started afresh when the client
    /// CA roots change ([`Resumption`]).
    resumption: Resumption,
    /// The handshake gates of the workers serving this configuration,
    /// which [`TlsConfig::max_handshakes_in_flight`] resizes live; a
    /// stopped server's are dropped and pruned here.
    gates: Vec<std::sync::Weak<GateInner>>,
}

/// Session resumption's state: the stateful cache and the ticket keys.
///
/// Kept across reloads of the server's certificates, but made afresh when
/// the client CA roots (or CRLs, or the client-auth mode) change: rustls
/// resumes a session whatever its verifier says now (a resumed session
/// carries the client chain of the handshake it resumes, verified then),
/// so a session made before a CA was dropped, a device revoked, or client
/// auth turned on would otherwise still be resumed without a certificate
/// that verifies now.
#[derive(Clone)]
struct Resumption {
    session_cache: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl fmt::Debug for Resumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resumption").finish_non_exhaustive()
    }
}

impl Resumption {
    fn new() -> Result<Resumption, TlsError> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::new(format!("cannot create the session ticketer: {e}")))?;
        Ok(Resumption {
            session_cache: rustls::server::ServerSessionMemoryCache::new(TLS_SESSION_CACHE_SIZE),
            ticketer,
        })
    }

    /// The state to resume with once the client verifier is `next`, the
    /// old one `old`: this one if they verify alike, else a fresh one.
    fn after(
        &self,
        old: Option<&LoadedClientAuth>,
        next: Option<&LoadedClientAuth>,
    ) -> Result<Resumption, TlsError> {
        let same = old.map(|l| &l.fingerprint) == next.map(|l| &l.fingerprint);
        if same {
            Ok(self.clone())
        } else {
            Resumption::new()
        }
    }
}

/// What a handshake needs, swapped whole on reload.
pub(crate) struct Live {
    pub config: Arc<ServerConfig>,
    pub handshake_timeout: Option<Duration>,
    /// Where the client CA's CRLs came from, for the line a handshake
    /// logs if webpki finds one bad (`LoadedClientAuth::crl_sources`).
    pub crl_sources: Option<Arc<str>>,
}

struct Shared {
    settings: Mutex<Settings>,
    live: RwLock<Arc<Live>>,
    /// [`TlsConfig::handshake_rate_per_ip`]'s buckets, read on every TLS
    /// accept; replaced whole when the rate changes.
    ip_rate: RwLock<Option<Arc<PerIpRate>>>,
    /// [`TlsConfig::reload`]s that worked, then those that failed
    /// (`TlsStats`).
    reloads: [AtomicU64; 2],
}

/// TLS settings for a server: certificates (a default one plus any number
/// chosen by SNI), ALPN protocols, handshake timeout, session resumption.
/// TLS 1.2 and 1.3 only, on rustls with the `ring` provider.
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = megaconn::TlsConfig::from_pem_files("cert.pem", "key.pem")?
///     .with_sni_pem_files("api.example.com", "api-cert.pem", "api-key.pem")?;
/// let server = megaconn::Server::bind("0.0.0.0:443".parse()?)
///     .tls(tls.clone())
///     .listen()?;
/// // Later, after the files were renewed: new handshakes use the new ones.
/// tls.reload()?;
/// # Ok(()) }
/// ```
///
/// Clones share the live configuration: [`reload`](TlsConfig::reload) on any
/// clone affects the server. Resumption: a stateful session cache of
/// [`TLS_SESSION_CACHE_SIZE`] entries and stateless tickets whose key rotates
/// every 6 hours (rustls' `Ticketer`); both survive a reload.
#[derive(Clone)]
pub struct TlsConfig {
    shared: Arc<Shared>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.settings();
        f.debug_struct("TlsConfig")
            .field(
                "certificates",
                &s.entries
                    .iter()
                    .map(|e| (e.name.as_deref().unwrap_or("*"), &e.source))
                    .collect::<Vec<_>>(),
            )
            .field(
                "alpn",
                &s.alpn
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>(),
            )
            .field("handshake_timeout", &s.handshake_timeout)
            .field("tickets", &s.tickets)
            .field("kx_groups", &s.kx_groups)
            .field("max_handshakes_in_flight", &s.max_handshakes_in_flight)
            .field("client_auth", &s.client_auth)
            .finish()
    }
}

impl TlsConfig {
    /// A configuration whose default certificate chain and private key are
    /// read from PEM files (the chain leaf first; the key PKCS#8, PKCS#1 or
    /// SEC1). The files are read again by [`reload`](TlsConfig::reload).
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        TlsConfig::new(Source::Files {
            cert: cert.as_ref().to_path_buf(),
            key: key.as_ref().to_path_buf(),
        })
    }

    /// A configuration whose default certificate chain and key are PEM text.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsConfig, TlsError> {
        TlsConfig::new(Source::Pem {
            cert: cert_pem.to_vec(),
            key: key_pem.to_vec(),
        })
    }

    fn new(source: Source) -> Result<TlsConfig, TlsError> {
        let key = load(&source)?;
        let settings = Settings {
            entries: vec![Entry {
                name: None,
                source,
                key,
            }],
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            handshake_timeout: Some(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
            tickets: true,
            kx_groups: DEFAULT_TLS_KX_GROUPS.to_vec(),
            max_handshakes_in_flight: Some(DEFAULT_TLS_MAX_HANDSHAKES_IN_FLIGHT),
            client_auth: ClientAuth::Off,
            client_verifier: None,
            resumption: Resumption::new()?,
            gates: Vec::new(),
        };
        let live = build(&settings)?;
        Ok(TlsConfig {
            shared: Arc::new(Shared {
                settings: Mutex::new(settings),
                live: RwLock::new(Arc::new(live)),
                ip_rate: RwLock::new(None),
                reloads: Default::default(),
            }),
        })
    }

    /// Adds a certificate served to clients that ask for `server_name` (SNI),
    /// from PEM files. `*.example.com` matches one label. Clients asking for
    /// another name, or none (connecting by IP), get the default certificate.
    pub fn with_sni_pem_files(
        self,
        server_name: &str,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        self.add_sni(
            server_name,
            Source::Files {
                cert: cert.as_ref().to_path_buf(),
                key: key.as_ref().to_path_buf(),
            },
        )
    }

    /// Adds a certificate for `server_name` (SNI), from PEM text.
    pub fn with_sni_pem(
        self,
        server_name: &str,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig, TlsError> {
        self.add_sni(
            server_name,
            Source::Pem {
                cert: cert_pem.to_vec(),
                key: key_pem.to_vec(),
            },
        )
    }

    fn add_sni(self, server_name: &str, source: Source) -> Result<TlsConfig, TlsError> {
        let key = load(&source)?;
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        self.update(|s| {
            s.entries.retain(|e| e.name.as_deref() != Some(&name));
            s.entries.push(Entry {
                name: Some(name),
                source,
                key,
            });
        })?;
        Ok(self)
    }

    /// ALPN protocols offered, in order of preference. Default: `h2`,
    /// `http/1.1`. A connection that negotiates `h2` speaks HTTP/2; any
    /// other (or none, a client that offers no ALPN) speaks HTTP/1.1. A
    /// client that offers ALPN but none of these protocols (only `h2`, when
    /// it is left out) fails the handshake with rustls'
    /// `no_application_protocol` alert.
    pub fn alpn_protocols(self, protocols: Vec<Vec<u8>>) -> TlsConfig {
        self.update(|s| s.alpn = protocols)
            .expect("certificates were already valid");
        self
    }

    /// Time a client has to complete the handshake; past it the connection is
    /// closed. Default: 10 s ([`DEFAULT_TLS_HANDSHAKE_TIMEOUT`]). `None`
    /// disables.
    pub fn handshake_timeout(self, t: Option<Duration>) -> TlsConfig {
        self.update(|s| s.handshake_timeout = crate::conn::config::zero_is_off(t))
            .expect("certificates were already valid");
        self
    }

    /// Whether stateless session tickets are issued. Default: on. Off,
    /// resumption uses the server-side session cache only.
    pub fn session_tickets(self, on: bool) -> TlsConfig {
        self.update(|s| s.tickets = on)
            .expect("certificates were already valid");
        self
    }

    /// Key-exchange groups offered, in order of preference. Default:
    /// [`DEFAULT_TLS_KX_GROUPS`] (X25519, P-256). A client that offers none
    /// of them fails the handshake with a `handshake_failure` alert. An
    /// empty list is refused.
    pub fn kx_groups(self, groups: &[KxGroup]) -> Result<TlsConfig, TlsError> {
        if groups.is_empty() {
            return Err(TlsError::new("no key-exchange group given".into()));
        }
        let mut unique = Vec::with_capacity(groups.len());
        for &g in groups {
            if !unique.contains(&g) {
                unique.push(g);
            }
        }
        self.update(|s| s.kx_groups = unique)?;
        Ok(self)
    }

    /// The most TLS handshakes one worker works on at once. Default:
    /// [`DEFAULT_TLS_MAX_HANDSHAKES_IN_FLIGHT`]; `None` (or 0, or 2^40 and
    /// over: more than a process can hold connections): unbounded.
    ///
    /// A handshake is *in flight* from its accept until it waits for the
    /// client, and again from when the client's next flight arrives until
    /// it waits again or ends: while the server has its key exchange and
    /// signature to compute. At the bound the worker stops accepting on its
    /// TLS listeners (new connections wait in the kernel's backlog), and a
    /// handshake whose client answered waits its turn, until one leaves;
    /// established connections and cleartext listeners are served
    /// meanwhile. So a flood of ClientHellos queues at most this many
    /// handshakes' work ahead of other requests on a worker. A handshake
    /// waiting for its client holds no place: idle or slow clients cannot
    /// lock the others out. Counted in
    /// `megaconn_limit_hits_total{limit="tls_handshakes_in_flight"}` each
    /// time the accept loop finds the bound reached, and logged (limited).
    ///
    /// Live, like the other settings here: called on a clone of a running
    /// server's configuration, it changes every worker's bound at once
    /// (raised, the accept loop and the handshakes waiting for a place get
    /// the new places now; lowered, places are withdrawn as the handshakes
    /// holding them give them back), so a bound can be raised under a flood
    /// without a restart. [`reload`](TlsConfig::reload) keeps it.
    pub fn max_handshakes_in_flight(self, n: Option<usize>) -> TlsConfig {
        let mut settings = self.settings();
        // Past any count of connections a process can hold, a bound is
        // none: stored as `None`, it never reaches the semaphore.
        let n = n.filter(|&n| n > 0 && n < UNBOUNDED_PLACES);
        settings.max_handshakes_in_flight = n;
        settings.gates.retain(|gate| match gate.upgrade() {
            Some(gate) => {
                gate.resize(n);
                true
            }
            None => false,
        });
        drop(settings);
        self
    }

    /// New TLS connections a client IP (IPv6: its /64) may open per
    /// second: a token bucket per IP with a burst of one second's worth (at
    /// least 1). Over it a connection is closed right after its accept,
    /// before any TLS work (no answer: its client expects a handshake; a FIN,
    /// its ClientHello discarded first so the close is not a reset),
    /// counted in `megaconn_limit_hits_total{limit="tls_handshake_rate_per_ip"}`
    /// and logged (limited). Default: `None`, no limit; 0, negative or NaN
    /// is `None`.
    ///
    /// What it is for: `Builder::max_connections_per_ip` bounds an IP's
    /// connections *open at once*, and a client that replays a ClientHello
    /// and hangs up holds one for well under a millisecond, so it can make
    /// thousands of handshakes a second within any such bound, each costing
    /// the server a key exchange and a signature (~0.2 ms with X25519 and
    /// an ECDSA P-256 key, ~0.8 ms with RSA-2048: `bench/H2TLS.md`).
    /// Browsers open a handful of connections to a site and resume
    /// sessions after that: a rate of a few per second per IP leaves them
    /// alone, unless many users share one address (a NAT).
    ///
    /// Live: on a running server's clone it applies to the next accept
    /// (a changed rate counts afresh; the same rate set again keeps every
    /// IP's bucket). [`reload`](TlsConfig::reload) keeps it.
    pub fn handshake_rate_per_ip(self, per_second: Option<f64>) -> TlsConfig {
        let per_second = per_second.filter(|r| *r > 0.0);
        let mut rate = self
            .shared
            .ip_rate
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // The same rate keeps its buckets: SIGHUP sets it again each time,
        // which must not give every IP a fresh burst.
        if rate.as_ref().map(|r| r.per_second()) != per_second {
            *rate = per_second.map(|r| Arc::new(PerIpRate::new(r)));
        }
        drop(rate);
        self
    }

    /// Whether a new connection from `ip` is within
    /// [`handshake_rate_per_ip`](TlsConfig::handshake_rate_per_ip) (taking
    /// its token, and saying whether its table forgot another IP to make
    /// room); `Err` saying why when it is not.
    pub(crate) fn admit_from(&self, ip: std::net::IpAddr) -> Result<Admitted, OverIpRate> {
        let rate = self
            .shared
            .ip_rate
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match rate {
            Some(rate) => rate.try_take(ip, tokio::time::Instant::now()),
            None => Ok(Admitted::Metered),
        }
    }

    /// Reads every certificate and key given as files again and makes them
    /// live for new handshakes; connections already open keep theirs. On any
    /// error nothing changes (the old certificates stay live).
    ///
    /// It logs nothing: the caller knows the outcome and says it once, with
    /// what it knows (`megaconn serve` names the files). It used to log
    /// `TLS certificates reloaded` too, and every SIGHUP to `megaconn serve`
    /// wrote two lines for one reload.
    pub fn reload(&self) -> Result<(), TlsError> {
        // Counted, whichever it was, in `megaconn_tls_reloads_total{outcome}`
        // (`TlsStats`): a renewal that did not take shows on a dashboard.
        let reloaded = self.reload_files();
        incr(&self.shared.reloads[usize::from(reloaded.is_err())]);
        reloaded
    }

    fn reload_files(&self) -> Result<(), TlsError> {
        let mut settings = self.settings();
        let mut entries = settings.entries.clone();
        for entry in &mut entries {
            if let Source::Files { .. } = entry.source {
                entry.key = load(&entry.source)?;
            }
        }
        // The client CA roots and CRLs too, when they are files: a renewed
        // CA bundle or a new CRL (a device revoked) applies on SIGHUP.
        let verifier = match settings.client_auth.has_files() {
            true => settings.client_auth.load()?,
            false => settings.client_verifier.clone(),
        };
        let resumption = settings
            .resumption
            .after(settings.client_verifier.as_ref(), verifier.as_ref())?;
        let next = Settings {
            entries,
            client_verifier: verifier,
            resumption,
            ..settings.clone()
        };
        // Swapped in whole once it builds: on any error nothing changed.
        let live = build(&next)?;
        *settings = next;
        *self.shared.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        Ok(())
    }

    /// Asks TLS clients for a certificate, verified against CA roots
    /// (mutual TLS): [`ClientAuth::Required`] refuses a handshake without
    /// one that verifies, [`ClientAuth::Optional`] lets a client without
    /// one in; [`ClientAuth::Off`] (the default) asks for none. Reads the
    /// roots (and CRLs) now: an unreadable file, a PEM without a
    /// certificate, or a CA rustls cannot use is an error, and nothing
    /// changes.
    ///
    /// The chain a client presented reaches its handlers as
    /// [`PeerCertificates`](crate::PeerCertificates) (a request extension
    /// on HTTP/1.1 and HTTP/2; `Session::peer_certificates` and
    /// `WsSession::peer_certificates` on message connections). One
    /// setting for the whole configuration: every listener it serves and
    /// every SNI certificate (rustls verifies clients per configuration,
    /// not per name).
    ///
    /// Live, as the other settings: on a running server's clone it applies
    /// to the next handshake; open connections keep the certificate they
    /// were verified with. [`reload`](TlsConfig::reload) reads the CA and
    /// CRL files again. Session resumption (tickets and the session cache)
    /// starts afresh whenever the roots, CRLs or mode change, so no session
    /// verified under the old ones resumes under the new (rustls itself
    /// would resume it: it checks the verifier at full handshakes only).
    ///
    /// Cost: nothing while off. On, each full handshake verifies the
    /// client's chain (an ECDSA or RSA signature check per certificate,
    /// about what the server's own signature costs), and the connection
    /// keeps one copy of the chain's DER while it lives, parked or not
    /// (~1 KB for a one-certificate chain: see the README's TLS section),
    /// which its HTTP/1.1 requests share (taken out of the rustls session
    /// at the handshake, never copied again).
    pub fn client_auth(self, auth: ClientAuth) -> Result<TlsConfig, TlsError> {
        let loaded = auth.load()?;
        let mut settings = self.settings();
        let resumption = settings
            .resumption
            .after(settings.client_verifier.as_ref(), loaded.as_ref())?;
        let next = Settings {
            client_auth: auth,
            client_verifier: loaded,
            resumption,
            ..settings.clone()
        };
        let live = build(&next)?;
        *settings = next;
        *self.shared.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        drop(settings);
        Ok(self)
    }

    /// The reloads so far and the live certificates' expiry (read off
    /// their DER at each call: a scrape's few microseconds, where keeping
    /// it would take a field kept in step with every way a certificate
    /// changes).
    pub(crate) fn stats(&self) -> TlsStats {
        let certificates = self
            .settings()
            .entries
            .iter()
            .map(|e| {
                let name = e.name.clone().unwrap_or_else(|| "default".to_owned());
                (name, chain_expiry(&e.key.cert))
            })
            .collect();
        TlsStats {
            reloads_ok: self.shared.reloads[0].load(Relaxed),
            reloads_failed: self.shared.reloads[1].load(Relaxed),
            certificates,
        }
    }

    /// The rustls configuration new handshakes use now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.live().config.clone()
    }

    pub(crate) fn live(&self) -> Arc<Live> {
        self.shared
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.shared
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut Settings)) -> Result<(), TlsError> {
        let mut settings = self.settings();
        change(&mut settings);
        let live = build(&settings)?;
        *self.shared.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        Ok(())
    }
}

/// When the first certificate of `chain` expires: the earliest `notAfter`,
/// in seconds since the Unix epoch; `None` if one of them does not read as
/// X.509.
fn chain_expiry(chain: &[CertificateDer<'_>]) -> Option<i64> {
    chain.iter().map(|c| not_after(c)).min()?
}

/// A certificate's `notAfter` (RFC 5280, 4.1.2.5), in seconds since the
/// Unix epoch. Read with yasna (the DER reader rcgen uses, already in the
/// tree): rustls and webpki parse the validity but do not give it out.
fn not_after(der: &[u8]) -> Option<i64> {
    use yasna::{tags::TAG_UTCTIME, BERReader, Tag};
    fn time(r: BERReader<'_, '_>) -> yasna::ASN1Result<i64> {
        Ok(match r.lookahead_tag()? == TAG_UTCTIME {
            true => r.read_utctime()?.datetime().unix_timestamp(),
            false => r.read_generalized_time()?.datetime().unix_timestamp(),
        })
    }
    // BER, a superset of DER: a certificate whose encoding is not strictly
    // DER is still served by rustls, and still expires.
    let read = yasna::parse_ber(der, |r| {
        r.read_sequence(|cert| {
            let expiry = cert.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                for _serial_signature_issuer in 0..3 {
                    tbs.next().read_der()?;
                }
                let expiry = tbs.next().read_sequence(|validity| {
                    time(validity.next())?;
                    time(validity.next())
                })?;
                // Subject, key and the optional rest, unread.
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(expiry)
            })?;
            cert.next().read_der()?;
            cert.next().read_der()?;
            Ok(expiry)
        })
    });
    read.ok()
}

fn load(source: &Source) -> Result<Arc<CertifiedKey>, TlsError> {
    let (certs, key, what) = match source {
        Source::Files { cert, key } => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    TlsError::new(format!(
                        "cannot read certificates from {}: {e}",
                        cert.display()
                    ))
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                TlsError::new(format!(
                    "cannot read a private key from {}: {e}",
                    key.display()
                ))
            })?;
            (certs, key, cert.display().to_string())
        }
        Source::Pem { cert, key } => {
            let certs = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::new(format!("cannot parse the certificate PEM: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| TlsError::new(format!("cannot parse the private key PEM: {e}")))?;
            (certs, key, "the certificate PEM".to_string())
        }
    };
    if certs.is_empty() {
        return Err(TlsError::new(format!("no certificate found in {what}")));
    }
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::new(format!("unsupported private key for {what}: {e}")))?;
    let certified = CertifiedKey::new(certs, signer);
    certified.keys_match().map_err(|e| {
        TlsError::new(format!(
            "the private key does not match the certificate in {what}: {e}"
        ))
    })?;
    Ok(Arc::new(certified))
}

fn build(settings: &Settings) -> Result<Live, TlsError> {
    let mut resolver = SniResolver::default();
    for entry in &settings.entries {
        match &entry.name {
            None => resolver.default = Some(entry.key.clone()),
            Some(name) => {
                resolver.by_name.insert(name.clone(), entry.key.clone());
            }
        }
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = settings.kx_groups.iter().map(|g| g.ring()).collect();
    let provider = Arc::new(provider);
    let versions = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::new(format!("TLS setup failed: {e}")))?;
    let mut config = match &settings.client_verifier {
        None => versions.with_no_client_auth(),
        Some(loaded) => versions.with_client_cert_verifier(loaded.verifier.clone()),
    }
    .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = settings.alpn.clone();
    config.session_storage = settings.resumption.session_cache.clone();
    if settings.tickets {
        config.ticketer = settings.resumption.ticketer.clone();
    }
    Ok(Live {
        config: Arc::new(config),
        handshake_timeout: settings.handshake_timeout,
        crl_sources: settings
            .client_verifier
            .as_ref()
            .and_then(|loaded| loaded.crl_sources.clone()),
    })
}

/// Picks the certificate by SNI (exact name, then `*.` + parent), else the
/// default.
#[derive(Debug, Default)]
struct SniResolver {
    default: Option<Arc<CertifiedKey>>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(key) = self.by_name.get(&name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = self.by_name.get(&format!("*.{parent}")) {
                    return Some(key.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// The TLS configuration for connections arriving on the local address
/// `local`, if they are TLS: every listener's when no address was added with
/// `listen_tls_on`, else only those listeners'; never a cleartext framed
/// listener's (`cleartext_listeners`: with `tls` set and no TLS address
/// named, such a listener took TLS handshake places and the per-IP
/// handshake rate refused its clients). The listener is found as every
/// per-listener setting's is ([`Config::listener_at`]).
pub(crate) fn tls_for_local(config: &Config, local: SocketAddr) -> Option<&TlsConfig> {
    let tls = config.tls.as_ref()?;
    if config.tls_listeners.is_empty() && config.cleartext_listeners.is_empty() {
        return Some(tls);
    }
    let listener = config.listener_at(local)?;
    if config.tls_listeners.is_empty() {
        return (!config.cleartext_listeners.contains(&listener)).then_some(tls);
    }
    config.tls_listeners.contains(&listener).then_some(tls)
}

/// A worker's bound on its TLS handshakes in flight
/// ([`TlsConfig::max_handshakes_in_flight`]): a place is taken at the accept
/// (the accept loop waits for one) and given back whenever the handshake
/// waits for its client, taken again when the client's bytes wake it.
/// A semaphore, FIFO: the accept loop and woken handshakes queue in turn.
///
/// Every worker of a TLS server has one, bounded or not (unbounded: more
/// places than file descriptors), so that a bound set on the running
/// server ([`GateInner::resize`]) applies without a restart.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeGate {
    inner: Arc<GateInner>,
}

/// The places of an unbounded gate: past any count of connections a
/// process can hold, so never reached.
const UNBOUNDED_PLACES: usize = 1 << 40;

/// A [`HandshakeGate`]'s size, shared with its [`TlsConfig`] to resize it.
#[derive(Debug)]
pub(crate) struct GateInner {
    places: Arc<tokio::sync::Semaphore>,
    size: Mutex<GateSize>,
    /// [`GateSize::owed`], read without the lock on the accept path.
    owed: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
struct GateSize {
    /// The bound applied; `None`: unbounded.
    cap: Option<usize>,
    /// Places withdrawn by a lower bound while handshakes held them: taken
    /// out of the semaphore as they come back.
    owed: usize,
}

/// A bound's places in the semaphore: at or over [`UNBOUNDED_PLACES`] a
/// bound is no bound (and tokio's `Semaphore` panics over its own maximum,
/// 2^61, so `usize::MAX` must not reach it).
fn places_of(cap: Option<usize>) -> usize {
    cap.map_or(UNBOUNDED_PLACES, |n| n.min(UNBOUNDED_PLACES))
}

impl GateInner {
    /// A gate of bound `cap` (`None`: unbounded).
    fn new(cap: Option<usize>) -> Arc<GateInner> {
        Arc::new(GateInner {
            places: Arc::new(tokio::sync::Semaphore::new(places_of(cap))),
            size: Mutex::new(GateSize { cap, owed: 0 }),
            owed: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Makes the bound `cap`: more places now, or fewer as they come back.
    fn resize(&self, cap: Option<usize>) {
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        let (old, new) = (places_of(size.cap), places_of(cap));
        size.cap = cap;
        if new >= old {
            // Places still owed from a lower bound are cancelled first.
            let more = new - old;
            let cancelled = more.min(size.owed);
            size.owed -= cancelled;
            self.places.add_permits(more - cancelled);
        } else {
            size.owed += old - new;
        }
        self.settle_locked(&mut size);
    }

    /// Takes owed places out of the semaphore, as many as are free.
    fn settle(&self) {
        if self.owed.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
            self.settle_locked(&mut size);
        }
    }

    fn settle_locked(&self, size: &mut GateSize) {
        size.owed -= self.places.forget_permits(size.owed);
        self.owed
            .store(size.owed, std::sync::atomic::Ordering::Relaxed);
    }

    fn cap(&self) -> Option<usize> {
        self.size.lock().unwrap_or_else(|e| e.into_inner()).cap
    }
}

/// A handshake's place in flight ([`HandshakeGate`]); dropping it frees it,
/// or withdraws it if a lowered bound is still owed places.
#[derive(Debug)]
pub(crate) struct HandshakePlace {
    /// Always `Some` until the drop, which takes it.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    inner: Arc<GateInner>,
}

impl Drop for HandshakePlace {
    /// A place given back pays what a lowered bound is owed first: back in
    /// the semaphore it would go straight to a task waiting for a place (the
    /// accept loop at the bound, a woken handshake), never free for
    /// [`GateInner::settle`] to take, and the lower bound would not hold
    /// while tasks wait, which is under the flood it was lowered for.
    fn drop(&mut self) {
        if self.inner.owed.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        // Under the lock `resize` holds: the debt read is the debt paid.
        let mut size = self.inner.size.lock().unwrap_or_else(|e| e.into_inner());
        if size.owed > 0 {
            if let Some(permit) = self.permit.take() {
                permit.forget();
                size.owed -= 1;
                self.inner
                    .owed
                    .store(size.owed, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

impl GateInner {
    /// `permit`, taken from this gate's semaphore, as a place.
    fn place(self: &Arc<Self>, permit: tokio::sync::OwnedSemaphorePermit) -> HandshakePlace {
        HandshakePlace {
            permit: Some(permit),
            inner: self.clone(),
        }
    }

    /// Waits for a place (FIFO with the other waiters).
    async fn acquire(self: &Arc<Self>) -> HandshakePlace {
        let permit = self
            .places
            .clone()
            .acquire_owned()
            .await
            .expect("the gate's semaphore is never closed");
        self.place(permit)
    }
}

impl HandshakeGate {
    /// The gate of a worker serving `config`, if it has TLS; registered
    /// with its [`TlsConfig`], which resizes it.
    pub(crate) fn of(config: &Config) -> Option<HandshakeGate> {
        let tls = config.tls.as_ref()?;
        let mut settings = tls.settings();
        let inner = GateInner::new(settings.max_handshakes_in_flight);
        settings.gates.retain(|g| g.strong_count() > 0);
        settings.gates.push(Arc::downgrade(&inner));
        Some(HandshakeGate { inner })
    }

    /// A place if one is free now.
    pub(crate) fn try_enter(&self) -> Option<HandshakePlace> {
        self.inner.settle();
        let permit = self.inner.places.clone().try_acquire_owned().ok()?;
        Some(self.inner.place(permit))
    }

    /// For the accept loop of worker `ctx`, with a TLS connection waiting
    /// and no place free: counts the hit, logs (limited) and waits for a
    /// place.
    pub(crate) async fn enter_at_cap(&self, ctx: &WorkerContext) -> HandshakePlace {
        LimitHit::TlsHandshakesInFlight.count(&ctx.stats);
        let cap = self.inner.cap();
        ratelog::log(Flood::TlsHandshakesInFlight, |suppressed| {
            tracing::warn!(
                worker = ctx.index,
                max_handshakes_in_flight = cap,
                suppressed,
                "TLS handshakes in flight at the bound: new TLS connections wait in the backlog until one is done (paced, not refused: a wave of reconnects, legitimate or not, is handshaked at the pace the CPU allows). Raise --tls-max-handshakes only if clients time out while the CPU has room to spare"
            )
        });
        self.inner.acquire().await
    }
}

/// What a connection's handshake starts from: the configuration live at
/// its accept, and its place among the worker's handshakes in flight.
pub(crate) struct HandshakeStart {
    pub live: Arc<Live>,
    pub place: Option<HandshakePlace>,
    /// When the connection was accepted, if a step before the handshake
    /// took time since (a PROXY header's wait); `None`: it starts now.
    pub accepted: Option<tokio::time::Instant>,
}

/// A TLS connection's stream (its session boxed inside).
pub(crate) type ServerTls = TlsIo<TcpStream>;

/// Runs the TLS handshake, bounded by the handshake timeout and, during
/// graceful shutdown, by the grace a new connection gets (5 s from its
/// accept, `WorkerContext::handshake`: closed without a word, as
/// `shutdown_before_request`, counted `outcome="shutdown"`); on failure,
/// says why the connection closes. The stream it returns keeps that
/// instant ([`Parkable::accepted_at`](crate::conn::transport::Parkable::accepted_at)):
/// the first request's wait after it (HTTP/1.1's head, HTTP/2's handshake)
/// is cut 5 s after the same accept.
///
/// `place`: its place among the worker's handshakes in flight, taken at the
/// accept ([`HandshakeGate`]); given back whenever the handshake waits for
/// the client and taken again (waiting its turn) when the client's bytes
/// come, so the worker's run queue holds at most its bound of handshakes'
/// work, and a client that sends nothing holds no place.
pub(crate) async fn handshake(
    stream: TcpStream,
    ctx: &WorkerContext,
    HandshakeStart {
        live,
        place,
        accepted,
    }: HandshakeStart,
) -> Result<ServerTls, CloseReason> {
    // Its accept, near enough: this runs on the task's first poll, right
    // after it (a drain's grace for it is counted from here), unless a
    // PROXY header was read first.
    let since = accepted.unwrap_or_else(tokio::time::Instant::now);
    // The socket, for the address a refused client certificate's line
    // names (asked only when the line goes out); open while `failed` can
    // be called (the stream owns it until the handshake returns).
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    // The outcome a failure is counted under (below), when it says more
    // than `failed`: client auth's (`ClientAuthFailure`), plain HTTP's.
    let failed_as = std::cell::Cell::new(HandshakeOutcome::Failed);
    // Cloned for its line only with CRLs (an `Arc`'s count otherwise
    // untouched): `live` goes to the handshake.
    let crl_sources = live.crl_sources.clone();
    let failed = |e: std::io::Error| {
        // The client left: a reset, a close before or during the handshake,
        // or a fatal alert of its own (which the stream counted by name and
        // logged): its decision, not a protocol error.
        if client_left(&e) {
            return CloseReason::ClientClosed;
        }
        incr(&ctx.stats.protocol_errors);
        // Which client it was, for the lines that name it: they are of
        // failures on the client's own bytes, so the stream (and its
        // socket) is alive.
        // SAFETY: the handshake's stream owns `fd` until it returns, and
        // it failed on the client's bytes.
        let peer = || unsafe { peer_of(fd) };
        // A ClientHello in tiny records, over what a stream buffers, has a
        // label and a log kind of its own: a flood of them must not hide
        // other failures' lines, nor theirs it. So has a client
        // certificate refused (`client_auth`): what an operator looks for
        // when a device cannot connect.
        let failure = match TlsFailure::of(&e) {
            Some(TlsFailure::TooMuchBuffered { .. }) => {
                LimitHit::TlsHandshakeBuffer.count(&ctx.stats);
                ratelog::log(
                    Flood::TlsTooMuchBuffered,
                    |suppressed| tracing::info!(error = %e, suppressed, "TLS handshake over the TLS record buffer's limit; closing the connection"),
                );
                return CloseReason::TlsHandshakeFailed;
            }
            // A client that speaks HTTP where TLS is due: a URL or a
            // health check with `http://` for this `https://` port. Its
            // own line and label, naming the peer to go and fix.
            Some(TlsFailure::PlainHttp) => {
                failed_as.set(HandshakeOutcome::PlainHttp);
                ratelog::log(Flood::TlsPlainHttp, |suppressed| {
                    tracing::info!(
                        peer = %peer(),
                        suppressed,
                        "plain HTTP request sent to a TLS port: answered 400 \"Client sent an HTTP request to an HTTPS server.\" and closed: the client uses http:// where https:// is needed (or wants a cleartext address: Builder::listen_on beside listen_tls_on, serve --listen beside --tls-listen)"
                    )
                });
                return CloseReason::TlsHandshakeFailed;
            }
            Some(TlsFailure::Rejected(e)) => ClientAuthFailure::of(e),
            None => None,
        };
        match failure {
            Some(ClientAuthFailure::Refused(reason)) => {
                failed_as.set(HandshakeOutcome::ClientCert);
                incr(&ctx.stats.tls_client_cert_refusals[reason as usize]);
                ratelog::log(Flood::TlsClientCertRefused, |suppressed| {
                    tracing::info!(
                        reason = reason.label(),
                        error = %e,
                        peer = %peer(),
                        suppressed,
                        "TLS handshake refused the client's certificate: {} (ClientAuth; it got rustls' alert saying why); closing the connection",
                        reason.label()
                    )
                });
            }
            // The server's own list: a line at warn, naming the files.
            Some(ClientAuthFailure::Crl) => {
                failed_as.set(HandshakeOutcome::Crl);
                ratelog::log(Flood::TlsServerCrl, |suppressed| {
                    tracing::warn!(
                        error = %e,
                        crl = crl_sources.as_deref().unwrap_or("?"),
                        suppressed,
                        "TLS handshake failed on the server's own CRL, not on the client: replace the CRL file named (a fresh one from the CA that issued the client's certificate), then reload; closing the connection"
                    )
                });
            }
            None => ratelog::log(
                Flood::TlsHandshakeFailed,
                |suppressed| tracing::info!(error = %e, suppressed, "TLS handshake failed; closing the connection"),
            ),
        }
        CloseReason::TlsHandshakeFailed
    };
    // SAFETY: called while the handshake runs, whose stream owns `fd`.
    let peer = || unsafe { peer_of(fd) };
    let ended = run_handshake(stream, ctx, live, place, failed, since, peer).await;
    let outcome = match &ended {
        Ok(_) => HandshakeOutcome::Completed,
        Err(CloseReason::ClientClosed) => HandshakeOutcome::Abandoned,
        Err(CloseReason::TlsHandshakeTimeout) => HandshakeOutcome::Timeout,
        Err(CloseReason::ShutdownBeforeRequest) => HandshakeOutcome::Shutdown,
        Err(_) => failed_as.get(),
    };
    outcome.count(&ctx.stats);
    ended
}

/// The client's address on `fd`, for a line that names it.
///
/// # Safety
///
/// `fd` must be open: the socket of a handshake still running.
unsafe fn peer_of(fd: std::os::fd::RawFd) -> String {
    // SAFETY: open, as the caller promised.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    ratelog::peer_name(crate::conn::ConnInfo::of(&socket).map(|i| i.peer))
}

/// [`handshake`]'s work, its outcome counted by the caller. `since` and
/// `peer`: when it began and who its client is, for a drain's cut
/// (`WorkerContext::handshake`).
async fn run_handshake(
    stream: TcpStream,
    ctx: &WorkerContext,
    live: Arc<Live>,
    place: Option<HandshakePlace>,
    failed: impl FnOnce(std::io::Error) -> CloseReason,
    since: tokio::time::Instant,
    peer: impl FnOnce() -> String,
) -> Result<ServerTls, CloseReason> {
    let timeout = live.handshake_timeout;
    let mut tls = match TlsIo::new(stream, live.config.clone()) {
        Ok(tls) => tls,
        Err(e) => return Err(failed(std::io::Error::other(e))),
    };
    // The steps after the handshake (the first HTTP/1.1 head, the HTTP/2
    // handshake) are cut by a drain 5 s after the same instant, not after
    // the handshake's end, as Go's `StateNew` spans the TLS handshake.
    tls.set_accepted(since);
    drop(live);
    let mut gate = ctx.tls_gate.as_ref().map(|g| {
        (
            g.inner.clone(),
            tokio_util::sync::PollSemaphore::new(g.inner.places.clone()),
        )
    });
    let mut place = place;
    let done = std::future::poll_fn(|cx| {
        if let (Some((inner, places)), None) = (gate.as_mut(), place.as_ref()) {
            inner.settle();
            match places.poll_acquire(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(taken) => place = taken.map(|permit| inner.place(permit)),
            }
        }
        let progress = tls.poll_handshake(cx);
        if progress.is_pending() {
            // Waiting for the client: no work of ours queued.
            place = None;
        }
        progress
    });
    // Cut by graceful shutdown as a new connection's first head is (see
    // `WorkerContext::handshake`).
    ctx.handshake(
        timeout,
        done,
        CloseReason::TlsHandshakeTimeout,
        failed,
        since,
        peer,
    )
    .await?;
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TlsConfig {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        TlsConfig::from_pem(
            cert.cert.pem().as_bytes(),
            cert.key_pair.serialize_pem().as_bytes(),
        )
        .unwrap()
    }

    /// A bound past anything a process can hold (a config file's
    /// `tls_max_handshakes = 3000000000000000000`) is no bound: tokio's
    /// semaphore panics over 2^61 places, at a worker's start and at a
    /// resize (SIGHUP, on the main thread).
    #[test]
    fn a_huge_bound_is_unbounded_not_a_panic() {
        for huge in [usize::MAX, 3_000_000_000_000_000_000, UNBOUNDED_PLACES] {
            let tls = config().max_handshakes_in_flight(Some(huge));
            assert_eq!(tls.settings().max_handshakes_in_flight, None);
            // At a worker's start.
            let gate = GateInner::new(Some(huge));
            assert_eq!(gate.places.available_permits(), UNBOUNDED_PLACES);
            // Resized from a bound, from none, and back.
            let gate = GateInner::new(Some(4));
            gate.resize(Some(huge));
            assert_eq!(gate.places.available_permits(), UNBOUNDED_PLACES);
            gate.resize(Some(4));
            assert_eq!(gate.places.available_permits(), 4);
            gate.resize(None);
            gate.resize(Some(huge));
            assert_eq!(gate.places.available_permits(), UNBOUNDED_PLACES);
        }
    }

    /// A bound lowered while handshakes hold their places holds once they
    /// give them back, also while a task waits for a place (the accept loop
    /// at the bound, a woken handshake): under a flood, which is when it is
    /// lowered. (From the merge review.)
    #[tokio::test]
    async fn a_lowered_bound_holds_while_places_are_awaited() {
        let inner = GateInner::new(Some(4));
        let gate = HandshakeGate {
            inner: inner.clone(),
        };
        let mut held: Vec<_> = (0..4).map(|_| gate.try_enter().unwrap()).collect();
        inner.resize(Some(1));
        // The accept loop: `try_enter` (which settles), then the wait.
        let waiting = gate.clone();
        let mut waiter = tokio::spawn(async move {
            match waiting.try_enter() {
                Some(place) => place,
                None => waiting.inner.acquire().await,
            }
        });
        tokio::task::yield_now().await;
        while held.len() > 1 {
            // A handshake waits for its client: its place comes back.
            held.pop();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(
                !waiter.is_finished(),
                "a place given with {} in flight, bound 1",
                held.len()
            );
        }
        held.pop();
        let place = (&mut waiter).await.unwrap();
        assert_eq!(inner.places.available_permits(), 0, "bound 1, 1 in flight");
        assert_eq!(inner.size.lock().unwrap().owed, 0);
        drop(place);
        assert_eq!(inner.places.available_permits(), 1);
        // Raised again: every place is back.
        inner.resize(Some(4));
        assert_eq!(inner.places.available_permits(), 4);
    }

    /// Setting the per-IP handshake rate again to the same value (SIGHUP
    /// does, each time) keeps every IP's bucket: no fresh burst per SIGHUP.
    /// A changed rate starts afresh.
    #[test]
    fn the_same_handshake_rate_set_again_keeps_the_buckets() {
        let ip: std::net::IpAddr = [192, 0, 2, 7].into();
        let tls = config().handshake_rate_per_ip(Some(0.01));
        assert_eq!(tls.admit_from(ip), Ok(Admitted::Metered));
        assert_eq!(tls.admit_from(ip), Err(OverIpRate::Rate(0.01)));
        let tls = tls.clone().handshake_rate_per_ip(Some(0.01));
        assert_eq!(
            tls.admit_from(ip),
            Err(OverIpRate::Rate(0.01)),
            "a fresh bucket after a SIGHUP"
        );
        let tls = tls.clone().handshake_rate_per_ip(Some(0.02));
        assert_eq!(
            tls.admit_from(ip),
            Ok(Admitted::Metered),
            "a changed rate counts afresh"
        );
        assert_eq!(tls.admit_from(ip), Err(OverIpRate::Rate(0.02)));
    }
}
