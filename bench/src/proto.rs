//! The line protocol between the orchestrator ([`crate::run`]) and a workload client
//! ([`crate::client`]): one JSON [`Op`] per line on the client's stdin, one JSON [`Reply`] per
//! line on its stdout.
//!
//! A pipe rather than command-line arguments, because the client has to stay alive between
//! workloads: the orchestrator samples the proxy's memory and CPU in `/proc` while the client
//! holds connections open, and egressd's proxy only lives as long as its `exec` command.

use serde::{Deserialize, Serialize};

/// The name every client asks for (TLS SNI, `Host`, `CONNECT` target); the upstream's
/// certificate names it.
pub const UPSTREAM_NAME: &str = "bench.test";

/// The header an intercepting proxy injects, and the value the upstream checks it against.
pub const TOKEN_HEADER: &str = "x-bench-token";
/// The value of [`TOKEN_HEADER`]; only the proxies hold it, never the client.
pub const TOKEN_VALUE: &str = "bench-secret-7f3c";
/// The response header in which the upstream says whether [`TOKEN_HEADER`] arrived (`1`/`0`).
pub const TOKEN_SEEN_HEADER: &str = "x-bench-token-seen";

/// Size of the body of `GET /small`.
pub const SMALL_BODY: usize = 64;

/// One workload step, sent by the orchestrator. Every step is bounded in time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Retry one request on a new connection until it succeeds or `timeout_ms` passes.
    Ready {
        /// Give up after this long.
        timeout_ms: u64,
    },
    /// New connections (connect, TLS handshake, one request, close) from `concurrency`
    /// workers, for `duration_ms`.
    ConnRate {
        /// Workers, each opening one connection at a time.
        concurrency: usize,
        /// How long to keep opening connections.
        duration_ms: u64,
    },
    /// Requests on `concurrency` kept-alive connections, for `duration_ms`.
    KeepAlive {
        /// Connections, each with one request in flight.
        concurrency: usize,
        /// How long to keep sending requests.
        duration_ms: u64,
    },
    /// One `GET /bulk/<bytes>` on a new connection.
    Bulk {
        /// Body size.
        bytes: u64,
        /// Give up after this long.
        timeout_ms: u64,
    },
    /// Open connections (each completes one request, then stays idle) until `total` are held.
    Hold {
        /// Connections to hold in all, counting those already held.
        total: usize,
        /// Connections being opened at once.
        parallel: usize,
        /// Stop opening after this long.
        timeout_ms: u64,
    },
    /// `count` new connections one after the other, for setup latency (while others are held).
    Probe {
        /// Connections to open.
        count: usize,
    },
    /// Close every held connection.
    Release,
    /// Exit.
    Quit,
}

/// The answer to one [`Op`]. Fields an op does not use stay at their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    /// The op completed (possibly with some failed operations, counted in `errors`).
    pub ok: bool,
    /// Operations that succeeded: connections, requests.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Seconds the measured phase took.
    pub secs: f64,
    /// Median latency of one operation, in microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, in microseconds.
    pub p99_us: f64,
    /// Body bytes received (`Bulk`).
    pub bytes: u64,
    /// Connections held after the op (`Hold`, `Release`).
    pub held: usize,
    /// The upstream saw the injected token (`Ready`).
    pub token_seen: bool,
    /// The first error, for the log.
    pub error: Option<String>,
}

impl Reply {
    /// A failed op with its reason.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// Median and 99th percentile of `samples` (microseconds), sorting them in place.
pub fn percentiles(samples: &mut [u32]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_unstable();
    let at = |q: usize| f64::from(samples[(samples.len() * q / 100).min(samples.len() - 1)]);
    (at(50), at(99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_one_json_object_per_line() {
        let line = serde_json::to_string(&Op::Hold {
            total: 10,
            parallel: 2,
            timeout_ms: 5,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"op":"hold","total":10,"parallel":2,"timeout_ms":5}"#
        );
        assert!(matches!(
            serde_json::from_str::<Op>(r#"{"op":"quit"}"#).unwrap(),
            Op::Quit
        ));
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentiles(&mut v), (51.0, 100.0));
        assert_eq!(percentiles(&mut []), (0.0, 0.0));
        assert_eq!(percentiles(&mut [7]), (7.0, 7.0));
    }
}
