//! SPIFFE names: IDs, trust domains, the Workload API endpoint, and which upstream IDs a rule
//! accepts.
//!
//! These are the pure parts of SPIFFE workload identity (`source = "spiffe-x509"` credentials
//! and the `spiffe` key of `[[intercept]]` rules). The proxy crate talks to the Workload API
//! and verifies certificates; it uses the types here to read and judge the SPIFFE IDs it finds.
//!
//! * [`SpiffeId`]: `spiffe://<trust domain><path>`, checked as the SPIFFE ID standard says
//!   (lowercase trust domain of `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]` that are not
//!   empty, `.` or `..`, no query, fragment, port or user info, at most 2048 bytes).
//! * [`TrustDomain`]: the trust domain name alone (`example.org`, or `spiffe://example.org`).
//! * [`WorkloadEndpoint`]: where the Workload API listens, `unix:///path` (or `unix:/path`, or
//!   an absolute path), as in `SPIFFE_ENDPOINT_SOCKET`. Only Unix sockets are supported: the
//!   Workload API authenticates its callers by their process, which a TCP endpoint cannot do.
//! * [`PeerAuthorization`]: which SPIFFE IDs a rule accepts from the upstream (a list of IDs,
//!   or any ID of one trust domain).

use std::fmt;
use std::path::PathBuf;

/// The longest SPIFFE ID the standard allows, in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A valid SPIFFE ID, such as `spiffe://example.org/ns/prod/sa/budget-backend`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID.
    text: String,
    /// Where the path starts in `text` (its length when the path is empty).
    path_at: usize,
}

impl SpiffeId {
    /// Parses and checks `text`.
    ///
    /// # Errors
    ///
    /// A lowercase message saying what is wrong and what a valid ID looks like.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_ID_LEN {
            return Err(format!("a SPIFFE ID is at most {MAX_ID_LEN} bytes"));
        }
        let rest = text.strip_prefix("spiffe://").ok_or_else(|| {
            format!("'{text}' does not start with spiffe:// (write spiffe://<trust domain>/<path>)")
        })?;
        let (domain, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        check_trust_domain(domain).map_err(|why| format!("'{text}': {why}"))?;
        check_path(path).map_err(|why| format!("'{text}': {why}"))?;
        Ok(Self {
            text: text.to_owned(),
            path_at: "spiffe://".len() + domain.len(),
        })
    }

    /// The trust domain name, such as `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.text["spiffe://".len()..self.path_at]
    }

    /// The path, such as `/ns/prod/sa/budget-backend` (empty for a trust domain's own ID).
    pub fn path(&self) -> &str {
        &self.text[self.path_at..]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A valid trust domain name, such as `example.org`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses `example.org` or `spiffe://example.org` (the trust domain's own ID, as the
    /// Workload API keys federated bundles).
    ///
    /// # Errors
    ///
    /// A lowercase message saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let name = text.strip_prefix("spiffe://").unwrap_or(text);
        let name = name.strip_suffix('/').unwrap_or(name);
        check_trust_domain(name).map_err(|why| format!("'{text}': {why}"))?;
        Ok(Self(name.to_owned()))
    }

    /// The name, such as `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the SPIFFE Workload API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadEndpoint {
    /// A Unix domain socket (`unix:///run/spire/agent/public/api.sock`).
    Unix(PathBuf),
}

impl WorkloadEndpoint {
    /// Parses `unix:///path`, `unix:/path` or an absolute path (the forms of
    /// `SPIFFE_ENDPOINT_SOCKET`, SPIFFE Workload Endpoint §4).
    ///
    /// # Errors
    ///
    /// A lowercase message: not a `unix:` URI with an absolute path, or a `tcp:` endpoint
    /// (refused: the Workload API identifies its callers through the Unix socket).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(text)));
        }
        if text.starts_with("tcp:") {
            return Err(format!(
                "'{text}': only unix: Workload API endpoints are supported (the agent \
                 identifies its callers through the Unix socket)"
            ));
        }
        let path = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
            .ok_or_else(|| {
                format!("'{text}' is not a Workload API endpoint: write unix:///path/to/agent.sock")
            })?;
        if !path.starts_with('/') || path.len() < 2 {
            return Err(format!(
                "'{text}': the socket path must be absolute (unix:///path/to/agent.sock; a \
                 host such as unix://host/path is not allowed)"
            ));
        }
        if path.contains(['?', '#']) {
            return Err(format!("'{text}': remove the query or fragment"));
        }
        Ok(Self::Unix(PathBuf::from(path)))
    }
}

impl fmt::Display for WorkloadEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Which SPIFFE IDs a rule accepts from the upstream it dials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAuthorization {
    /// Exactly these IDs (`upstream_spiffe_ids`).
    Ids(Vec<SpiffeId>),
    /// Any ID of this trust domain (`upstream_trust_domain`).
    TrustDomain(TrustDomain),
}

impl PeerAuthorization {
    /// `Ok` when `id` is acceptable; otherwise why not, naming what is allowed.
    ///
    /// # Errors
    ///
    /// A lowercase message naming `id` and the allowed IDs or trust domain.
    pub fn authorize(&self, id: &SpiffeId) -> Result<(), String> {
        let ok = match self {
            Self::Ids(ids) => ids.contains(id),
            Self::TrustDomain(domain) => id.trust_domain() == domain.as_str(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the upstream's SPIFFE ID {id} is not allowed ({self})"
            ))
        }
    }
}

impl fmt::Display for PeerAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ids(ids) => {
                f.write_str("allowed: ")?;
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id}")?;
                }
                Ok(())
            }
            Self::TrustDomain(domain) => write!(f, "allowed: any ID of trust domain {domain}"),
        }
    }
}

/// A trust domain name: 1 to 255 bytes of lowercase letters, digits, `.`, `-` and `_`.
fn check_trust_domain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the trust domain is missing".to_owned());
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "a trust domain is at most {MAX_TRUST_DOMAIN_LEN} bytes"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        let why = match c {
            ':' => "a trust domain has no port".to_owned(),
            '@' => "a SPIFFE ID has no user info".to_owned(),
            'A'..='Z' => "a trust domain is lowercase".to_owned(),
            _ => format!("{c:?} is not allowed in a trust domain (a-z, 0-9, '.', '-', '_')"),
        };
        return Err(why);
    }
    Ok(())
}

/// A SPIFFE ID path: empty, or `/segment` repeated; segments are not empty, `.` or `..`, and
/// use only letters, digits, `.`, `-` and `_`.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err("the path has an empty segment (or a trailing '/')".to_owned()),
            "." | ".." => return Err("the path has a '.' or '..' segment".to_owned()),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            let why = match c {
                '?' | '#' => "a SPIFFE ID has no query or fragment".to_owned(),
                _ => format!(
                    "{c:?} is not allowed in a SPIFFE ID path (A-Z, a-z, 0-9, '.', '-', '_')"
                ),
            };
            return Err(why);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_split_into_trust_domain_and_path() {
        let id = SpiffeId::parse("spiffe://aim.example.com/github/runner-1").unwrap();
        assert_eq!(id.trust_domain(), "aim.example.com");
        assert_eq!(id.path(), "/github/runner-1");
        assert_eq!(id.to_string(), "spiffe://aim.example.com/github/runner-1");
        let domain_only = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(domain_only.trust_domain(), "example.org");
        assert_eq!(domain_only.path(), "");
        assert!(SpiffeId::parse("spiffe://a_b-c.d/A.b-c_D/0").is_ok());
    }

    #[test]
    fn invalid_ids_say_why() {
        for (bad, why) in [
            ("https://example.org/x", "does not start with spiffe://"),
            ("SPIFFE://example.org/x", "does not start with spiffe://"),
            ("spiffe:///x", "trust domain is missing"),
            ("spiffe://", "trust domain is missing"),
            ("spiffe://Example.org/x", "lowercase"),
            ("spiffe://example.org:8443/x", "no port"),
            ("spiffe://user@example.org/x", "no user info"),
            ("spiffe://example.org/", "empty segment"),
            ("spiffe://example.org//x", "empty segment"),
            ("spiffe://example.org/x/", "empty segment"),
            ("spiffe://example.org/./x", "'.' or '..'"),
            ("spiffe://example.org/x/..", "'.' or '..'"),
            ("spiffe://example.org/x?y=1", "no query or fragment"),
            ("spiffe://example.org/x#y", "no query or fragment"),
            (
                "spiffe://example.org/a b",
                "not allowed in a SPIFFE ID path",
            ),
            ("spiffe://exa mple.org/x", "not allowed in a trust domain"),
        ] {
            let err = SpiffeId::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_ID_LEN));
        assert!(SpiffeId::parse(&long).unwrap_err().contains("2048"));
    }

    #[test]
    fn trust_domains_accept_the_bare_name_or_its_id() {
        assert_eq!(
            TrustDomain::parse("example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::parse("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        assert!(TrustDomain::parse("spiffe://example.org/x").is_err());
        assert!(TrustDomain::parse("").is_err());
        assert!(TrustDomain::parse("EXAMPLE.org").is_err());
    }

    #[test]
    fn workload_endpoints_are_unix_sockets_with_absolute_paths() {
        let sock = |p: &str| WorkloadEndpoint::Unix(PathBuf::from(p));
        assert_eq!(
            WorkloadEndpoint::parse("unix:///run/spire/agent.sock"),
            Ok(sock("/run/spire/agent.sock"))
        );
        assert_eq!(
            WorkloadEndpoint::parse("unix:/run/spire/agent.sock"),
            Ok(sock("/run/spire/agent.sock"))
        );
        assert_eq!(
            WorkloadEndpoint::parse("/tmp/agent.sock"),
            Ok(sock("/tmp/agent.sock"))
        );
        assert_eq!(
            sock("/run/spire/agent.sock").to_string(),
            "unix:///run/spire/agent.sock"
        );
        for (bad, why) in [
            ("tcp://127.0.0.1:8081", "only unix:"),
            ("unix://host/agent.sock", "must be absolute"),
            ("unix:relative.sock", "must be absolute"),
            ("unix:///", "must be absolute"),
            ("unix:///a.sock?x=1", "query"),
            ("agent.sock", "write unix:///"),
            ("http://localhost/agent.sock", "write unix:///"),
        ] {
            let err = WorkloadEndpoint::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn peers_are_authorized_by_id_or_trust_domain() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let backend = id("spiffe://aim.example.com/budget-backend");
        let other = id("spiffe://aim.example.com/other");
        let foreign = id("spiffe://evil.example/budget-backend");
        let by_id = PeerAuthorization::Ids(vec![backend.clone()]);
        assert_eq!(by_id.authorize(&backend), Ok(()));
        let err = by_id.authorize(&other).unwrap_err();
        assert!(
            err.contains("spiffe://aim.example.com/other is not allowed")
                && err.contains("allowed: spiffe://aim.example.com/budget-backend"),
            "{err}"
        );
        let by_domain =
            PeerAuthorization::TrustDomain(TrustDomain::parse("aim.example.com").unwrap());
        assert_eq!(by_domain.authorize(&backend), Ok(()));
        assert_eq!(by_domain.authorize(&other), Ok(()));
        let err = by_domain.authorize(&foreign).unwrap_err();
        assert!(err.contains("trust domain aim.example.com"), "{err}");
    }
}
