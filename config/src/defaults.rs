//! Every default value of the configuration, in one place.
//!
//! Other modules (and other crates) read defaults from here and never repeat the numbers.

use std::time::Duration;

/// How long the proxy waits for the first bytes (`ClientHello` or HTTP request head).
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the proxy waits for a TCP connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a relayed connection may stay silent in both directions before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_mins(5);

/// How long a DNS resolution of an allowed name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Destination ports an allowed name may be reached on, unless the file sets `ports`
/// (AWF's `Safe_ports` without the host and api-proxy additions).
pub const PORTS: &[u16] = &[80, 443];

/// Entra authority of the public cloud, for credentials that do not set `authority`.
pub const ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Scope of the blueprint hop of an `entra-agent` credential (`reference/tokens.md` §3).
pub const ENTRA_EXCHANGE_SCOPE: &str = "api://AzureADTokenExchange/.default";

/// Port used for a `--dns-server` address given without one.
pub const DNS_PORT: u16 = 53;
