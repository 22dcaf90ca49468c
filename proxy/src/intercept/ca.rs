//! [`EphemeralCa`]: the run's certificate authority, and [`CaResolver`], which hands its
//! leaves to a rustls server.
//!
//! The CA is made once per daemon run ([`EphemeralCa::new`]) and lives as long as the run.
//! Leaves are minted on the first handshake for a name ([`EphemeralCa::leaf_for`]) and kept
//! in a bounded cache, so repeated handshakes do not sign again.
//!
//! # Security
//!
//! * The CA key is generated in memory by rcgen and stays inside [`EphemeralCa`]: no method
//!   returns it, serializes it or writes it anywhere, and the `Debug` output omits it. When
//!   the run ends it is dropped, and the certificate stops meaning anything.
//! * The CA certificate is constrained (RFC 5280 name constraints, critical) to the
//!   intercepted domains, see `scope.rs`. A sandbox that trusts it therefore trusts it
//!   for those names only; a leaf for any other name fails verification in every client
//!   that enforces name constraints, even if the key leaked.
//! * [`EphemeralCa::leaf_for`] checks the same scope before signing, so the daemon never
//!   mints a leaf the constraints would not cover (defence in depth for clients that ignore
//!   name constraints).
//! * `pathlen:0` forbids intermediate CAs under it, and the CA expires after
//!   [`CA_LIFETIME`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::crypto::KeyProvider;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

use super::scope::Scope;

/// How many leaves [`EphemeralCa::leaf_for`] keeps; beyond that the oldest is dropped.
pub const LEAF_CACHE_CAPACITY: usize = 1024;

/// How long the CA certificate (and so every leaf) is valid, counted from its creation.
///
/// A daemon run that outlives this needs a new CA (and a new trust bundle in the sandbox).
pub const CA_LIFETIME: Duration = Duration::hours(24);

/// How far `notBefore` is set in the past, for clients whose clock is behind ours.
const BACKDATE: Duration = Duration::hours(1);

/// Why the CA or a leaf could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A leaf was asked for a name that is not a DNS name (empty, an IP literal, a wildcard,
    /// bad characters). Usually a client sending an odd SNI.
    #[error("{name:?} is not a dns name a leaf can be minted for")]
    InvalidName {
        /// The name as received.
        name: String,
    },
    /// rustls refused the freshly minted leaf key (a bug: rcgen and rustls disagree on the
    /// key's encoding).
    #[error("loading the leaf key into rustls")]
    LoadKey(#[source] rustls::Error),
    /// The CA was asked for with nothing to intercept. Only make a CA when a rule
    /// intercepts a domain.
    #[error("no intercepted domains: an ephemeral CA is only made for domains to intercept")]
    NoInterceptedDomains,
    /// A leaf was asked for a name outside the intercepted domains, so outside the CA's name
    /// constraints: no leaf is minted. The caller decided to intercept a name the CA was not
    /// made for; add the domain to the intercepted list.
    #[error("{name} is not an intercepted domain: the CA's name constraints do not cover it")]
    OutsideScope {
        /// The name, normalised (lowercase, no trailing dot).
        name: String,
    },
    /// rcgen failed to generate a key or sign a certificate (a bug or an exhausted system
    /// random source, never input from the sandbox).
    #[error("signing the {what}")]
    Sign {
        /// What was being made: "CA certificate" or "leaf certificate".
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// An intercepted entry has a shape name constraints cannot express exactly (a scheme,
    /// a port, a wildcard other than a leading `*.`, an IP address). Name the domain
    /// (`example.com`) or its subdomains (`*.example.com`).
    #[error("cannot intercept {entry:?}: {why}")]
    UnsupportedEntry {
        /// The entry as the policy gave it.
        entry: String,
        /// What is wrong with it and what to write instead.
        why: &'static str,
    },
}

/// The run's certificate authority: ECDSA P-256, name-constrained to the intercepted
/// domains, key in memory only.
///
/// Share it as an `Arc` between the [`CaResolver`] and whoever exports [`Self::cert_pem`].
pub struct EphemeralCa {
    /// `egressd ephemeral CA <id>`.
    name: String,
    scope: Scope,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: OffsetDateTime,
    /// Holds the private key. Never exposed (see the module doc).
    issuer: Issuer<'static, KeyPair>,
    keys: &'static dyn KeyProvider,
    leaves: Mutex<LeafCache>,
}

impl EphemeralCa {
    /// Generates the CA for `intercepted`, the intercepted domains as the policy names them
    /// (`example.com`, `.example.com` or `*.example.com`; see `scope.rs` for the
    /// mapping to name constraints).
    ///
    /// # Errors
    ///
    /// [`CaError::NoInterceptedDomains`] for an empty list, [`CaError::UnsupportedEntry`]
    /// for an entry name constraints cannot express, [`CaError::Sign`] if rcgen fails.
    pub fn new(intercepted: &[String]) -> Result<Self, CaError> {
        Self::with_capacity(intercepted, LEAF_CACHE_CAPACITY)
    }

    /// The certificate's common name, `egressd ephemeral CA <id>`, where `<id>` is 16 hex
    /// digits of the public key (different on every run).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, PEM (what `egressd ca export` prints and the trust bundle ends
    /// with).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// When the CA certificate, and with it every leaf, expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Returns true if and only if the CA may certify `name` (any case, one trailing dot
    /// allowed), i.e. [`Self::leaf_for`] would not answer [`CaError::OutsideScope`] or
    /// [`CaError::InvalidName`].
    pub fn covers(&self, name: &str) -> bool {
        normalize(name).is_ok_and(|name| self.scope.covers(&name))
    }

    /// The leaf for `sni` with the chain `[leaf, CA]`, from the cache or freshly minted.
    ///
    /// The name is compared without case and without one trailing dot; the leaf's SAN is
    /// that normalised name, with the serverAuth EKU, valid from an hour ago until
    /// [`Self::not_after`]. The same `Arc` comes back for the same name until the cache
    /// drops it ([`LEAF_CACHE_CAPACITY`], oldest first).
    ///
    /// # Errors
    ///
    /// [`CaError::InvalidName`] if `sni` is not a DNS name, [`CaError::OutsideScope`] if it
    /// is not an intercepted domain (nothing is signed then), [`CaError::Sign`] or
    /// [`CaError::LoadKey`] if minting fails.
    pub fn leaf_for(&self, sni: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let name = normalize(sni)?;
        if !self.scope.covers(&name) {
            return Err(CaError::OutsideScope {
                name: name.as_ref().to_owned(),
            });
        }
        if let Some(leaf) = self.cache().get(name.as_ref()) {
            return Ok(leaf);
        }
        // Minted outside the lock so one slow signature does not stall other names; if two
        // handshakes race for a new name, the first insert wins and both get its leaf.
        let san = SanType::DnsName(name.as_ref().try_into().map_err(|source| CaError::Sign {
            what: "leaf certificate",
            source,
        })?);
        let leaf = Arc::new(self.mint(san)?);
        Ok(self.cache().insert(name.as_ref(), leaf))
    }

    /// Generates the CA with a leaf cache of `capacity` entries.
    pub(crate) fn with_capacity(intercepted: &[String], capacity: usize) -> Result<Self, CaError> {
        let scope = Scope::parse(intercepted)?;
        let sign_err = |source| CaError::Sign {
            what: "CA certificate",
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        // The uncompressed point is 0x04 || x || y; x is as random as the key.
        let id: String = key.public_key_raw()[1..9]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = format!("egressd ephemeral CA {id}");

        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, &name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "egressd");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(scope.name_constraints());
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key).map_err(sign_err)?;

        Ok(Self {
            name,
            scope,
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
            keys: rustls::crypto::ring::default_provider().key_provider,
            leaves: Mutex::new(LeafCache::new(capacity)),
        })
    }

    /// Mints a leaf for `san` without checking the scope: the bypass the tests use to prove
    /// that clients reject what the name constraints do not cover.
    #[cfg(test)]
    pub(crate) fn danger_mint_unchecked(&self, san: SanType) -> Arc<CertifiedKey> {
        Arc::new(self.mint(san).expect("minting a test leaf"))
    }

    /// The private key, for tests that check it appears nowhere it should not.
    #[cfg(test)]
    pub(crate) fn danger_key_der(&self) -> Vec<u8> {
        self.issuer.key().serialize_der()
    }

    /// Number of leaves in the cache.
    #[cfg(test)]
    pub(crate) fn cached_leaves(&self) -> usize {
        self.cache().map.len()
    }

    /// Signs a leaf for `san` with a fresh P-256 key. Callers check the scope first.
    fn mint(&self, san: SanType) -> Result<CertifiedKey, CaError> {
        let sign_err = |source| CaError::Sign {
            what: "leaf certificate",
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let common_name = match &san {
            SanType::DnsName(name) => name.as_str().to_owned(),
            SanType::IpAddress(ip) => ip.to_string(),
            _ => String::new(),
        };
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = OffsetDateTime::now_utc() - BACKDATE;
        params.not_after = self.not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_err)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = self.keys.load_private_key(key).map_err(CaError::LoadKey)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signing_key,
        ))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LeafCache> {
        // The cache is consistent between any two statements (no panics mid-update), so a
        // poisoned lock still holds a usable cache.
        self.leaves.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for EphemeralCa {
    /// Names the CA and its scope; never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralCa")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Resolves a rustls server's certificate from the SNI through [`EphemeralCa::leaf_for`].
///
/// Build the interception server with
/// `ServerConfig::builder().with_no_client_auth().with_cert_resolver(Arc::new(resolver))`
/// and set ALPN there. A ClientHello without SNI, or with a name the CA does not cover,
/// gets no certificate, and rustls aborts the handshake.
#[derive(Debug, Clone)]
pub struct CaResolver {
    ca: Arc<EphemeralCa>,
}

impl CaResolver {
    /// A resolver minting from `ca`.
    pub fn new(ca: Arc<EphemeralCa>) -> Self {
        Self { ca }
    }
}

impl ResolvesServerCert for CaResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            tracing::debug!("intercepted ClientHello without SNI: no certificate");
            return None;
        };
        match self.ca.leaf_for(sni) {
            Ok(leaf) => Some(leaf),
            Err(error) => {
                tracing::warn!(sni, error = &error as &dyn std::error::Error, "no leaf");
                None
            }
        }
    }
}

/// `sni` in lowercase without one trailing dot, as a DNS name (no IP literal, no wildcard).
fn normalize(sni: &str) -> Result<DnsName<'static>, CaError> {
    let invalid = || CaError::InvalidName {
        name: sni.to_owned(),
    };
    let name = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
    if name.parse::<IpAddr>().is_ok() {
        return Err(invalid());
    }
    DnsName::try_from(name).map_err(|_| invalid())
}

/// Leaves by name, dropped oldest-inserted first beyond `capacity`.
struct LeafCache {
    map: HashMap<String, Arc<CertifiedKey>>,
    order: VecDeque<String>,
    capacity: usize,
}

impl LeafCache {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.map.get(name).cloned()
    }

    /// Inserts `leaf` unless `name` is already there; returns the cached leaf either way.
    fn insert(&mut self, name: &str, leaf: Arc<CertifiedKey>) -> Arc<CertifiedKey> {
        if let Some(existing) = self.map.get(name) {
            return existing.clone();
        }
        while self.map.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&oldest);
        }
        self.order.push_back(name.to_owned());
        self.map.insert(name.to_owned(), leaf.clone());
        leaf
    }
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
