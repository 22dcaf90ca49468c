//! Every default value of the configuration, in one place.
//!
//! Other modules (and other crates) read defaults from here and never repeat the numbers.

use std::time::Duration;

/// How long the proxy waits for the first bytes (`ClientHello` or HTTP request head), in
/// total: a client that sends them slowly (slowloris) or never finishes them is closed then.
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an intercepted client may take to finish its TLS handshake with egressd.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kept-alive plain-HTTP or intercepted HTTP/1 connection may take to send the
/// whole head of its next request (counted from the end of the previous response, so it is
/// also how long such a connection may sit idle between requests). hyper's default.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the proxy waits for a TCP connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a relayed connection may stay silent in both directions before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_mins(5);

/// How long a DNS resolution of an allowed name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections one sandbox may have open through the proxy at once; more are reset
/// and audited. Each costs the daemon two file descriptors (client and upstream).
pub const MAX_CONNECTIONS: u32 = 4096;

/// Largest HTTP request head (request line and headers, in bytes) egressd reads from a
/// plain-HTTP or intercepted client; a larger one gets `431`. Envoy's default is 60 KiB,
/// nginx's 32 KiB.
pub const MAX_HEADER_BYTES: u32 = 64 * 1024;

/// Largest HTTP request body: none by default. Bodies stream through without being
/// buffered (except to sign `SigV4`), so size costs no memory; the limit is a policy choice
/// (Squid's `request_body_max_size` is unlimited by default too).
pub const MAX_BODY_BYTES: Option<u64> = None;

/// Destination ports an allowed name may be reached on, unless the file sets `ports`
/// (AWF's `Safe_ports` without the host and api-proxy additions).
pub const PORTS: &[u16] = &[80, 443];

/// Entra authority of the public cloud, for credentials that do not set `authority`.
pub const ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Scope of the blueprint hop of an `entra-agent` credential (`reference/tokens.md` §3).
pub const ENTRA_EXCHANGE_SCOPE: &str = "api://AzureADTokenExchange/.default";

/// Port used for a `--dns-server` address given without one.
pub const DNS_PORT: u16 = 53;

/// How long a request to a SPIFFE rule's host waits for the Workload API's first X.509-SVID
/// after egressd started (before it answers `503`).
pub const SPIFFE_FIRST_SVID_WAIT: Duration = Duration::from_secs(5);

/// How long egressd waits to connect to the SPIFFE Workload API socket.
pub const SPIFFE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
