//! Server configuration: certificates chosen by SNI, ALPN, versions, suites,
//! session resumption, and the caller-driven clock.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::time_provider::TimeProvider;
use rustls::{ServerConfig, SignatureAlgorithm};

use crate::error::Error;
use crate::suite::{Suite, Version};

/// Default number of sessions the [`LocalSessionStore`] keeps.
pub const DEFAULT_SESSION_CAPACITY: usize = 64 * 1024;
/// Default number of TLS 1.3 tickets sent after each handshake (rustls' default).
pub const DEFAULT_TLS13_TICKETS: usize = 2;

/// Wall-clock time as the caller last gave it; rustls reads it for session
/// and ticket lifetimes. Monotonic: an earlier time never moves it back.
#[derive(Debug, Default)]
pub struct CallerClock {
    secs: AtomicU64,
}

impl CallerClock {
    /// A clock at the Unix epoch until the first [`CallerClock::set`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Moves the clock to `now` (if later than the current value).
    pub fn set(&self, now: UnixTime) {
        self.secs.fetch_max(now.as_secs(), Ordering::Relaxed);
    }

    /// The current value.
    pub fn now(&self) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(self.secs.load(Ordering::Relaxed)))
    }
}

impl TimeProvider for CallerClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.now())
    }
}

/// The local in-memory session store: TLS 1.2 session IDs and, in stateful
/// TLS 1.3 mode, single-use TLS 1.3 sessions (rustls `take`s them on resume).
///
/// Bounded: beyond `capacity` entries the oldest is dropped. With an expiry
/// ([`LocalSessionStore::with_expiry`]) an entry older than the lifetime, by
/// the caller's clock, is not returned (rustls' server itself checks no
/// session age). A cluster-wide store replaces it through
/// [`TlsServerConfigBuilder::session_store`], which takes any rustls
/// `StoresServerSessions`.
#[derive(Debug)]
pub struct LocalSessionStore {
    capacity: usize,
    expiry: Option<(Arc<CallerClock>, u64)>,
    inner: Mutex<StoreInner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct StoreInner {
    /// key -> (generation, value, creation time in seconds)
    map: HashMap<Vec<u8>, (u64, Vec<u8>, u64)>,
    /// Insertion order; entries whose generation no longer matches are stale.
    order: VecDeque<(u64, Vec<u8>)>,
    next_gen: u64,
}

impl LocalSessionStore {
    /// A store holding at most `capacity` sessions (at least 1).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            expiry: None,
            inner: Mutex::new(StoreInner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// A store whose entries expire `lifetime` after they were stored, by
    /// `clock` (give it the configuration's clock, [`TlsServerConfig::clock`]
    /// or [`TlsServerConfigBuilder::clock`]).
    pub fn with_expiry(capacity: usize, clock: Arc<CallerClock>, lifetime: Duration) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            expiry: Some((clock, lifetime.as_secs())),
            inner: Mutex::new(StoreInner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn now_secs(&self) -> u64 {
        self.expiry.as_ref().map_or(0, |(c, _)| c.now().as_secs())
    }

    fn expired(&self, created: u64) -> bool {
        self.expiry
            .as_ref()
            .is_some_and(|(c, life)| c.now().as_secs().saturating_sub(created) > *life)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        // A panic elsewhere while holding the lock leaves a consistent map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions currently stored.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (lookups that found a session, lookups that did not).
    pub fn hits_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn count(&self, found: bool) {
        let c = if found { &self.hits } else { &self.misses };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl StoresServerSessions for LocalSessionStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut g = self.lock();
        let st = &mut *g;
        let generation = st.next_gen;
        st.next_gen += 1;
        let now = self.now_secs();
        st.map.insert(key.clone(), (generation, value, now));
        st.order.push_back((generation, key));
        while st.map.len() > self.capacity {
            let Some((g0, k)) = st.order.pop_front() else {
                break;
            };
            if st.map.get(&k).is_some_and(|(g1, _, _)| *g1 == g0) {
                st.map.remove(&k);
            }
        }
        // Taken or overwritten entries leave stale order entries: compact.
        if st.order.len() > 2 * self.capacity {
            let StoreInner { map, order, .. } = st;
            order.retain(|(g0, k)| map.get(k).is_some_and(|(g1, _, _)| g1 == g0));
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut g = self.lock();
        let v = match g.map.get(key) {
            Some((_, _, created)) if self.expired(*created) => {
                g.map.remove(key);
                None
            }
            found => found.map(|(_, v, _)| v.clone()),
        };
        self.count(v.is_some());
        v
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let v = self
            .lock()
            .map
            .remove(key)
            .filter(|(_, _, created)| !self.expired(*created))
            .map(|(_, v, _)| v);
        self.count(v.is_some());
        v
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// How TLS 1.3 resumption works.
#[derive(Debug, Clone)]
pub enum Tls13Resumption {
    /// Stateless tickets from this ticketer (default: rustls' ring ticketer,
    /// random keys rotated every 6 hours on system time).
    Tickets(Arc<dyn ProducesTickets>),
    /// Stateful: the ticket is a key into the session store; each resumption
    /// takes (removes) its entry, so a ticket is single use.
    Stateful,
    /// No TLS 1.3 resumption (no tickets sent).
    Disabled,
}

/// One certificate chain and key, and the server names it answers for.
#[derive(Debug, Clone)]
struct CertEntry {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks a certificate by SNI (exact name, then `*.parent` wildcard), falling
/// back to all certificates in configuration order; among candidates, the
/// first whose key the client can verify and that shares a suite with it
/// (an ECDSA key is no use to a TLS 1.2 client offering only RSA suites).
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Vec<Arc<CertifiedKey>>>,
    all: Vec<Arc<CertifiedKey>>,
    suites: Vec<Suite>,
}

impl SniResolver {
    fn candidates(&self, sni: Option<&str>) -> &[Arc<CertifiedKey>] {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(c) = self.by_name.get(&name) {
                return c;
            }
            if let Some(c) = name
                .split_once('.')
                .and_then(|(_, parent)| self.by_name.get(&format!("*.{parent}")))
            {
                return c;
            }
        }
        &self.all
    }

    fn shares_suite(&self, key: &CertifiedKey, offered: &[rustls::CipherSuite]) -> bool {
        let ecdsa = key.key.algorithm() == SignatureAlgorithm::ECDSA;
        self.suites.iter().any(|s| {
            offered.contains(&s.rustls().suite())
                && s.needs_ecdsa().is_none_or(|needs| needs == ecdsa)
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cands = self.candidates(hello.server_name());
        let usable =
            |k: &&Arc<CertifiedKey>| k.key.choose_scheme(hello.signature_schemes()).is_some();
        cands
            .iter()
            .filter(usable)
            .find(|k| self.shares_suite(k, hello.cipher_suites()))
            .or_else(|| cands.iter().find(usable))
            .or_else(|| cands.first())
            .cloned()
    }
}

/// A built server configuration, shared by all handshakes.
#[derive(Debug, Clone)]
pub struct TlsServerConfig {
    pub(crate) rustls: Arc<ServerConfig>,
    pub(crate) clock: Arc<CallerClock>,
}

impl TlsServerConfig {
    /// Starts a configuration.
    pub fn builder() -> TlsServerConfigBuilder {
        TlsServerConfigBuilder::default()
    }

    /// The clock handshakes read (set by [`crate::HandshakeDriver::handle_input`]).
    pub fn clock(&self) -> &Arc<CallerClock> {
        &self.clock
    }

    /// The underlying rustls configuration (read-only), e.g. for inspection in tests.
    pub fn rustls(&self) -> &Arc<ServerConfig> {
        &self.rustls
    }
}

/// Builds a [`TlsServerConfig`]. Defaults: TLS 1.2 and 1.3, every suite in
/// [`Suite::ALL`], no ALPN, a [`LocalSessionStore`], rustls' ticketer for
/// TLS 1.3, two tickets per handshake, no 0-RTT.
#[derive(Debug)]
pub struct TlsServerConfigBuilder {
    certs: Vec<CertEntry>,
    alpn: Vec<Vec<u8>>,
    versions: Vec<Version>,
    suites: Vec<Suite>,
    store: Option<Arc<dyn StoresServerSessions>>,
    tls13: Option<Tls13Resumption>,
    tickets: usize,
    clock: Option<Arc<CallerClock>>,
}

impl Default for TlsServerConfigBuilder {
    fn default() -> Self {
        Self {
            certs: Vec::new(),
            alpn: Vec::new(),
            versions: vec![Version::Tls13, Version::Tls12],
            suites: Suite::ALL.to_vec(),
            store: None,
            tls13: None,
            tickets: DEFAULT_TLS13_TICKETS,
            clock: None,
        }
    }
}

fn file_err(path: &Path, what: impl Into<String>) -> Error {
    Error::ConfigFile {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

impl TlsServerConfigBuilder {
    /// Adds a certificate chain (leaf first) and its private key from PEM
    /// files, for the given server names (`*.example.com` wildcards allowed;
    /// each must be covered by the certificate). The first certificate added
    /// also serves clients that send no SNI or an unknown name.
    pub fn certificate_pem_files(
        self,
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
        names: &[&str],
    ) -> Result<Self, Error> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| Error::ConfigIo {
                path: p.to_path_buf(),
                source,
            })
        };
        let chain_pem = read(chain)?;
        let key_pem = read(key)?;
        self.add_cert(&chain_pem, chain, &key_pem, key, names)
    }

    /// Like [`Self::certificate_pem_files`] with the PEM in memory; `label`
    /// names it in errors.
    pub fn certificate_pem(
        self,
        chain_pem: &[u8],
        key_pem: &[u8],
        names: &[&str],
        label: &str,
    ) -> Result<Self, Error> {
        let chain = PathBuf::from(format!("{label} (certificate chain)"));
        let key = PathBuf::from(format!("{label} (private key)"));
        self.add_cert(chain_pem, &chain, key_pem, &key, names)
    }

    fn add_cert(
        mut self,
        chain_pem: &[u8],
        chain_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
        names: &[&str],
    ) -> Result<Self, Error> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(chain_path, format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(file_err(chain_path, "no CERTIFICATE block"));
        }
        let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            file_err(
                key_path,
                format!("no usable private key (PKCS#8, SEC1 or PKCS#1 PEM): {e}"),
            )
        })?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
            file_err(
                key_path,
                format!("unsupported key (ECDSA P-256/P-384, RSA, Ed25519): {e}"),
            )
        })?;
        let ck = CertifiedKey::new(certs, signing);
        ck.keys_match().map_err(|e| {
            file_err(
                key_path,
                format!(
                    "key does not match the certificate in {}: {e}",
                    chain_path.display()
                ),
            )
        })?;
        let mut checked = Vec::with_capacity(names.len());
        for &name in names {
            let lower = name.to_ascii_lowercase();
            // rustls checks that the leaf certificate covers a name; a wildcard
            // entry is checked with a name under it.
            let probe = match lower.strip_prefix("*.") {
                Some(parent) => format!("relay-probe.{parent}"),
                None => lower.clone(),
            };
            let mut check = rustls::server::ResolvesServerCertUsingSni::new();
            check.add(&probe, ck.clone()).map_err(|e| {
                file_err(
                    chain_path,
                    format!("certificate is not valid for server name {name:?}: {e}"),
                )
            })?;
            checked.push(lower);
        }
        self.certs.push(CertEntry {
            names: checked,
            key: Arc::new(ck),
        });
        Ok(self)
    }

    /// ALPN protocols offered, in server preference order (e.g. `h2`, `http/1.1`).
    pub fn alpn_protocols(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// Protocol versions enabled.
    pub fn versions(mut self, versions: &[Version]) -> Self {
        self.versions = versions.to_vec();
        self
    }

    /// Cipher suites enabled, in server preference order.
    pub fn suites(mut self, suites: &[Suite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// The session store (TLS 1.2 session IDs; TLS 1.3 sessions in stateful mode).
    pub fn session_store(mut self, store: Arc<dyn StoresServerSessions>) -> Self {
        self.store = Some(store);
        self
    }

    /// How TLS 1.3 resumption works.
    pub fn tls13_resumption(mut self, mode: Tls13Resumption) -> Self {
        self.tls13 = Some(mode);
        self
    }

    /// TLS 1.3 tickets sent after each full handshake.
    pub fn tickets_per_handshake(mut self, n: usize) -> Self {
        self.tickets = n;
        self
    }

    /// The clock to use (to share one between configurations).
    pub fn clock(mut self, clock: Arc<CallerClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<TlsServerConfig, Error> {
        if self.certs.is_empty() {
            return Err(Error::Config {
                field: "certificates",
                what: "no certificate configured".into(),
            });
        }
        if self.versions.is_empty() {
            return Err(Error::Config {
                field: "versions",
                what: "no protocol version enabled".into(),
            });
        }
        for v in &self.versions {
            if !self.suites.iter().any(|s| s.version() == *v) {
                return Err(Error::Config {
                    field: "suites",
                    what: format!("no suite enabled for {v:?}"),
                });
            }
        }
        let suites: Vec<Suite> = self
            .suites
            .iter()
            .copied()
            .filter(|s| self.versions.contains(&s.version()))
            .collect();
        for p in &self.alpn {
            if p.is_empty() || p.len() > 255 {
                return Err(Error::Config {
                    field: "alpn_protocols",
                    what: "each protocol name must be 1..=255 bytes (RFC 7301 3.1)".into(),
                });
            }
        }

        let mut provider: CryptoProvider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = suites.iter().map(|s| s.rustls()).collect();
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = self
            .versions
            .iter()
            .map(|v| match v {
                Version::Tls12 => &rustls::version::TLS12,
                Version::Tls13 => &rustls::version::TLS13,
            })
            .collect();

        let mut by_name: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        for c in &self.certs {
            for n in &c.names {
                by_name.entry(n.clone()).or_default().push(c.key.clone());
            }
        }
        let resolver = SniResolver {
            by_name,
            all: self.certs.iter().map(|c| c.key.clone()).collect(),
            suites: suites.clone(),
        };

        let clock = self.clock.unwrap_or_default();
        let mut cfg = ServerConfig::builder_with_details(Arc::new(provider), clock.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| Error::Config {
                field: "versions",
                what: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));

        cfg.alpn_protocols = self.alpn;
        cfg.session_storage = self
            .store
            .unwrap_or_else(|| LocalSessionStore::new(DEFAULT_SESSION_CAPACITY));
        let tls13 =
            match self.tls13 {
                Some(m) => m,
                None => Tls13Resumption::Tickets(rustls::crypto::ring::Ticketer::new().map_err(
                    |e| Error::Config {
                        field: "ticketer",
                        what: e.to_string(),
                    },
                )?),
            };
        match tls13 {
            Tls13Resumption::Tickets(t) => {
                cfg.ticketer = t;
                cfg.send_tls13_tickets = self.tickets;
            }
            Tls13Resumption::Stateful => cfg.send_tls13_tickets = self.tickets,
            Tls13Resumption::Disabled => cfg.send_tls13_tickets = 0,
        }
        // No 0-RTT: early data would reach the backend before the handshake is
        // known good and could be replayed.
        cfg.max_early_data_size = 0;
        cfg.send_half_rtt_data = false;
        // The record layer takes over after the handshake: it needs the keys.
        cfg.enable_secret_extraction = true;
        Ok(TlsServerConfig {
            rustls: Arc::new(cfg),
            clock,
        })
    }
}
