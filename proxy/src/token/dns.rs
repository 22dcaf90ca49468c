//! [`OwnDns`]: how egressd's own requests (token endpoints, OIDC discovery, JWKS, the
//! Copilot exchange) find their hosts: the operator's `--resolve` overrides first, then the
//! `--dns-server`s when any are configured, else the system resolver of the daemon's network
//! namespace (`getaddrinfo`, so `/etc/hosts` counts). A lab or an air-gapped runner that names
//! its hosts with `--resolve` therefore works the same for the sandbox and for the broker.
//!
//! No private-address guard applies: these are egressd's requests to endpoints its operator
//! configured, not the sandbox's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::TokioResolver;

use super::error::MintError;

/// Where egressd's own requests look their hosts up; cheap to clone. The default asks the
/// system resolver.
#[derive(Clone, Default)]
pub struct OwnDns {
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
    /// `None`: the system resolver (`getaddrinfo`).
    servers: Option<TokioResolver>,
}

impl std::fmt::Debug for OwnDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnDns")
            .field("overrides", &self.overrides)
            .field("dns_servers", &self.servers.is_some())
            .finish()
    }
}

impl OwnDns {
    /// The configuration's `resolve` overrides and `dns_servers`.
    ///
    /// # Errors
    ///
    /// The resolver for the configured servers could not be built.
    pub fn from_config(config: &egressd_config::Config) -> Result<Self, crate::Error> {
        let overrides = config
            .resolve
            .iter()
            .map(|o| (o.host.clone(), o.addrs.clone()))
            .collect();
        let servers = if config.dns_servers.is_empty() {
            None
        } else {
            Some(crate::resolver::build(
                &config.dns_servers,
                config.timeouts.resolve,
            )?)
        };
        Ok(Self {
            overrides: Arc::new(overrides),
            servers,
        })
    }

    /// The addresses to dial for `host:port`, in order (`host` is a name, not an IP literal).
    pub(crate) async fn addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, MintError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ips) = self.overrides.get(&host) {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let addrs: Vec<SocketAddr> = match &self.servers {
            Some(resolver) => resolver
                .lookup_ip(format!("{host}."))
                .await
                .map_err(|e| MintError::unavailable(format!("resolving {host}: {e}")))?
                .iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            None => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| MintError::unavailable(format!("resolving {host}: {e}")))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(MintError::unavailable(format!("{host} has no address")));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> egressd_config::Config {
        let mut b = egressd_config::ConfigBuilder::new();
        for spec in args {
            b.resolve(spec).unwrap();
        }
        b.build().unwrap()
    }

    #[tokio::test]
    async fn resolve_overrides_name_token_endpoints_as_they_name_upstreams() {
        let dns = OwnDns::from_config(&config(&[
            "issuer.test:10.200.1.2",
            "issuer.test:10.200.1.3",
        ]))
        .unwrap();
        let addrs = dns.addrs("Issuer.Test.", 443).await.unwrap();
        let want: Vec<SocketAddr> = vec![
            "10.200.1.2:443".parse().unwrap(),
            "10.200.1.3:443".parse().unwrap(),
        ];
        assert_eq!(addrs, want);
        // Names without an override go to the system resolver.
        let local = dns.addrs("localhost", 8443).await.unwrap();
        assert!(
            local
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8443)
        );
        let err = OwnDns::default()
            .addrs("nx.invalid", 443)
            .await
            .unwrap_err();
        assert!(err.message.contains("nx.invalid"), "{}", err.message);
    }
}
