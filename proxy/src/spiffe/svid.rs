//! X.509-SVIDs and trust bundles from one Workload API response: parsed, checked, selected.
//!
//! Each `X509SVIDResponse` replaces the previous one whole. [`parse_response`] picks the SVID
//! a credential wants (the one with its `spiffe_id`, else the first: the default identity),
//! checks it the way the X.509-SVID standard describes (one `spiffe://` URI SAN equal to the
//! message's `spiffe_id`, not a CA, a chain and a key that match), loads its key for rustls,
//! and collects the trust bundles by trust domain: the SVID's own and the federated ones.
//!
//! # Security
//!
//! The private key bytes are zeroed as soon as rustls has loaded them; [`Svid`]'s `Debug`
//! shows the ID and validity only.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use egressd_config::spiffe::{SpiffeId, TrustDomain};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, TrustAnchor};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
use zeroize::Zeroize as _;

use super::workload::{X509Svid, X509SvidResponse};

/// The SVID a credential presents, ready for rustls.
pub(crate) struct Svid {
    /// Its SPIFFE ID.
    pub(crate) id: SpiffeId,
    /// The chain (leaf first) and the loaded key.
    pub(crate) certified: Arc<CertifiedKey>,
    /// The leaf's `notBefore`.
    pub(crate) not_before: OffsetDateTime,
    /// The leaf's `notAfter`.
    pub(crate) not_after: OffsetDateTime,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id.as_str())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// CA certificates per trust domain name (`example.org`), as webpki trust anchors.
pub(crate) type Bundles = HashMap<String, Arc<[TrustAnchor<'static>]>>;

/// What one response gives a credential: its SVID and every bundle.
#[derive(Debug)]
pub(crate) struct X509Context {
    /// The selected SVID.
    pub(crate) svid: Svid,
    /// The bundles, by trust domain (the SVID's own domain always present).
    pub(crate) bundles: Bundles,
}

/// Picks and checks the SVID `want` names (the first when `None`) and collects the bundles.
///
/// # Errors
///
/// A message for the operator: no SVID at all, none with the wanted ID (naming those
/// offered), or the selected one is malformed (its certificate, key or bundle).
pub(crate) fn parse_response(
    mut response: X509SvidResponse,
    want: Option<&SpiffeId>,
    provider: &CryptoProvider,
) -> Result<X509Context, String> {
    let index = match want {
        None if response.svids.is_empty() => {
            return Err("the Workload API sent no X.509-SVID".to_owned());
        }
        None => 0,
        Some(want) => response
            .svids
            .iter()
            .position(|s| s.spiffe_id == want.as_str())
            .ok_or_else(|| {
                let offered: Vec<&str> = response
                    .svids
                    .iter()
                    .map(|s| s.spiffe_id.as_str())
                    .collect();
                format!(
                    "the Workload API offers no X.509-SVID for {want} (it offers: {})",
                    if offered.is_empty() {
                        "none".to_owned()
                    } else {
                        offered.join(", ")
                    }
                )
            })?,
    };
    let mut chosen = response.svids.swap_remove(index);
    // The other SVIDs' keys are not needed: zero them now rather than when dropped.
    for other in &mut response.svids {
        other.x509_svid_key.zeroize();
    }
    let result = svid(&mut chosen, provider).and_then(|svid| {
        let mut bundles = Bundles::new();
        let own = anchors(&chosen.bundle).map_err(|why| {
            format!(
                "the bundle of trust domain {}: {why}",
                svid.id.trust_domain()
            )
        })?;
        for (key, der) in &response.federated_bundles {
            match (TrustDomain::parse(key), anchors(der)) {
                (Ok(domain), Ok(set)) => {
                    bundles.insert(domain.as_str().to_owned(), set);
                }
                (Err(why), _) | (_, Err(why)) => {
                    tracing::warn!(bundle = key, why, "ignoring a federated bundle");
                }
            }
        }
        bundles.insert(svid.id.trust_domain().to_owned(), own);
        Ok(X509Context { svid, bundles })
    });
    chosen.x509_svid_key.zeroize();
    result
}

/// The SPIFFE ID of an X.509-SVID: its one `spiffe://` URI SAN.
///
/// # Errors
///
/// The certificate does not parse, has no URI SAN or several, or its URI is not a valid
/// SPIFFE ID.
pub(crate) fn spiffe_id_of(cert: &[u8]) -> Result<SpiffeId, String> {
    let (_, cert) = X509Certificate::from_der(cert)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    uri_san(&cert)
}

// === helpers ===

/// Checks and loads one SVID. Leaves the key bytes in `raw` for the caller to zero.
fn svid(raw: &mut X509Svid, provider: &CryptoProvider) -> Result<Svid, String> {
    let id = SpiffeId::parse(&raw.spiffe_id)
        .map_err(|why| format!("the Workload API sent an invalid SPIFFE ID: {why}"))?;
    let fail = |why: String| format!("the X.509-SVID for {id}: {why}");
    let chain = split_der(&raw.x509_svid).map_err(fail)?;
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref())
        .map_err(|e| fail(format!("the certificate does not parse: {e}")))?;
    let named = uri_san(&leaf).map_err(fail)?;
    if named != id {
        return Err(fail(format!("its certificate names {named}")));
    }
    if leaf.is_ca() {
        return Err(fail("its certificate is a CA certificate".to_owned()));
    }
    let not_before = leaf.validity().not_before.to_datetime();
    let not_after = leaf.validity().not_after.to_datetime();
    // rustls takes the key by value; the copy it gets is freed inside rustls (ring keeps its
    // own form), ours is zeroed by the caller.
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(raw.x509_svid_key.clone()));
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| fail(format!("its private key is unusable: {e}")))?;
    Ok(Svid {
        id,
        certified: Arc::new(certified),
        not_before,
        not_after,
    })
}

/// The single `spiffe://` URI SAN of `cert`.
fn uri_san(cert: &X509Certificate<'_>) -> Result<SpiffeId, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("its subject alternative names do not parse: {e}"))?
        .ok_or("it has no subject alternative name (an X.509-SVID has one URI SAN)")?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (None, _) => Err("it has no URI SAN (an X.509-SVID has exactly one)".to_owned()),
        (Some(_), Some(_)) => Err("it has several URI SANs (an X.509-SVID has exactly one)".into()),
        (Some(uri), None) => SpiffeId::parse(uri),
    }
}

/// Trust anchors from concatenated DER CA certificates; at least one.
fn anchors(der: &[u8]) -> Result<Arc<[TrustAnchor<'static>]>, String> {
    let certs = split_der(der)?;
    certs
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| format!("a CA certificate is unusable: {e}"))
        })
        .collect()
}

/// Splits concatenated DER certificates (the Workload API's encoding of chains and bundles).
///
/// # Errors
///
/// Empty input, or bytes that are not a sequence of whole DER `SEQUENCE`s.
pub(crate) fn split_der(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if bytes.is_empty() {
        return Err("it is empty".to_owned());
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = der_len(bytes).ok_or("it is not concatenated DER certificates")?;
        let (one, rest) = bytes.split_at(len);
        out.push(CertificateDer::from(one.to_vec()));
        bytes = rest;
    }
    Ok(out)
}

/// The whole length (header and content) of the DER `SEQUENCE` at the start of `bytes`, when
/// it fits in `bytes`.
fn der_len(bytes: &[u8]) -> Option<usize> {
    if *bytes.first()? != 0x30 {
        return None;
    }
    let first = *bytes.get(1)?;
    let (header, content) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        // Long form: the low bits count the length bytes (at most 4 for a certificate).
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let length = bytes
            .get(2..2 + count)?
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (2 + count, length)
    };
    let total = header.checked_add(content)?;
    (total <= bytes.len()).then_some(total)
}
