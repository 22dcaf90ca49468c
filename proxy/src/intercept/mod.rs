//! TLS interception: the run's ephemeral CA, the leaves it mints, and the sandbox's trust
//! bundle (DESIGN.md decisions 4 and 5).
//!
//! ```text
//!  daemon start ─► EphemeralCa::new(intercepted domains)     ca.rs     key in memory only
//!                     │ cert_pem() ─► trust_bundle(system roots, ..) ─► file in the sandbox
//!                     ▼                                       bundle.rs
//!  intercepted TLS ─► rustls server with CaResolver ─► leaf_for(SNI) (cached, bounded)
//! ```
//!
//! Which names a CA may certify, and how the policy's domain entries become X.509 name
//! constraints, is decided once in `scope.rs` (its module doc has the table).
//!
//! This module owns no sockets and no policy: the caller decides to intercept a name, then
//! serves the handshake with a [`CaResolver`]. It reads no environment and writes no file.
//!
//! # Security
//!
//! * **Why name constraints.** The sandbox must trust our CA to let us terminate TLS for the
//!   intercepted hosts, but it should not thereby trust us for anything else. The CA
//!   certificate carries a critical NameConstraints extension whose permitted DNS subtrees
//!   are exactly the intercepted domains (and which excludes every IP address), so a leaf for
//!   any other name fails verification in the sandbox, whoever signed it. The daemon also
//!   refuses to mint such a leaf ([`CaError::OutsideScope`]), for clients that ignore name
//!   constraints.
//! * **Why the key never leaves memory.** A CA key on disk outlives the run, can be read by
//!   whoever gets the file, and turns a temporary, per-run trust into a lasting one. The key
//!   is generated at start, held only inside [`EphemeralCa`] (no accessor, no `Debug`, no
//!   serialisation), and dropped with it; the certificate expires after [`CA_LIFETIME`].
//! * **What a sandbox that reads the bundle can do.** The bundle holds certificates only:
//!   public data. With it, a sandboxed program can verify our leaves for the intercepted
//!   domains, and see which domains are intercepted (they are in the certificate). It cannot
//!   mint certificates (no key), cannot make the CA vouch for other names (constraints), and
//!   cannot use it outside this run (expiry, new key each run). Replacing the bundle only
//!   makes its own TLS connections fail; egressd's own upstream connections verify against
//!   their own roots.

mod bundle;
mod ca;
pub(crate) mod forward;
mod idle;
pub(crate) mod path;
pub(crate) mod redact;
mod scope;
mod server;
pub(crate) mod sigv4;
pub(crate) mod tools;
pub(crate) mod upstream;
mod ws;

pub(crate) use self::server::serve;

pub use self::bundle::{BundleError, SYSTEM_BUNDLES, find_system_bundle, trust_bundle};
pub use self::ca::{CA_LIFETIME, CaError, CaResolver, EphemeralCa, LEAF_CACHE_CAPACITY};

#[cfg(test)]
mod bundle_tests;

/// What the proxy needs to intercept: the TLS server configuration (leaves from the run's
/// CA), the pooled upstream clients, and the token broker.
pub(crate) struct Interception {
    /// rustls server with a [`CaResolver`], ALPN h2 and http/1.1.
    pub(crate) tls: std::sync::Arc<rustls::ServerConfig>,
    /// Verified, pooled connections to the real upstreams.
    pub(crate) upstream: upstream::Upstream,
    /// Pooled SPIFFE mTLS connections, by the host pattern of the rules that name `spiffe`.
    pub(crate) spiffe: std::collections::HashMap<String, SpiffeRoute>,
    /// Mints the credentials the rules inject.
    pub(crate) broker: crate::token::Broker,
    /// The redaction needles of the tokens injected lately, shared by every connection: a
    /// token's search automaton is built once per token, not once per connection.
    pub(crate) needles: redact::NeedleCache,
}

/// The upstream of a host whose rules name `spiffe`: the SVID source and its own clients.
pub(crate) struct SpiffeRoute {
    /// The `spiffe-x509` credential's name.
    pub(crate) credential: String,
    /// Its SVID.
    pub(crate) source: crate::spiffe::X509Source,
    /// Clients presenting that SVID and checking the upstream's SPIFFE ID.
    pub(crate) upstream: upstream::Upstream,
}

impl Interception {
    /// Builds the server side over `ca` and the client side over `connector`: the web-PKI
    /// clients, and SPIFFE clients for the hosts of `intercepts` whose rules name `spiffe`.
    ///
    /// # Errors
    ///
    /// `extra_ca_pem` (the `--upstream-ca` file's contents) holds no usable certificate; a
    /// rule names a `spiffe` credential the broker does not follow.
    pub(crate) fn new(
        ca: std::sync::Arc<EphemeralCa>,
        broker: crate::token::Broker,
        connector: std::sync::Arc<crate::transport::connect::Connector>,
        policy: std::sync::Arc<egressd_config::Policy>,
        extra_ca_pem: Option<&[u8]>,
        intercepts: &egressd_config::Intercepts,
    ) -> Result<Self, String> {
        let mut spiffe = std::collections::HashMap::new();
        for rule in intercepts.rules() {
            let Some(settings) = &rule.spiffe else {
                continue;
            };
            if spiffe.contains_key(&rule.host.text) {
                continue; // the configuration makes every rule of a host agree
            }
            let source = broker.x509(&settings.svid).ok_or_else(|| {
                format!(
                    "rule {}: `spiffe` names '{}', which is not a spiffe-x509 credential",
                    rule.host, settings.svid
                )
            })?;
            let route = SpiffeRoute {
                credential: settings.svid.clone(),
                source: source.clone(),
                upstream: upstream::Upstream::spiffe(
                    std::sync::Arc::clone(&connector),
                    std::sync::Arc::clone(&policy),
                    source.clone(),
                    &settings.peer,
                ),
            };
            spiffe.insert(rule.host.text.clone(), route);
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(std::sync::Arc::new(CaResolver::new(ca)));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            tls: std::sync::Arc::new(tls),
            upstream: upstream::Upstream::new(connector, policy, extra_ca_pem)?,
            spiffe,
            broker,
            needles: redact::NeedleCache::default(),
        })
    }
}
