//! The daemon's control protocol: one JSON request and one JSON response per connection on
//! a root-only Unix socket (`egressd run` serves it; `attach`, `detach`, `status` and
//! `reload` are its clients).
//!
//! Line-delimited JSON keeps the protocol readable with `socat` and stable across versions:
//! unknown fields are ignored, every response says `ok` and, when not, why.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize};

/// How long a client waits for the daemon's answer (attach binds listeners and attaches
/// programs; a reload may read files and resolve nothing, so this is generous).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Start firewalling a cgroup.
    Attach {
        /// What to attach to.
        target: Target,
        /// The attachment's name (default: derived from the target).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Stop firewalling one attachment, or all.
    Detach {
        /// The attachment; `None` with `all`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Every attachment.
        #[serde(default)]
        all: bool,
    },
    /// The daemon's state.
    Status,
    /// Re-read the configuration.
    Reload,
}

/// What `attach` attaches to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// A cgroup directory, its processes in `netns` (default: the daemon's namespace).
    Cgroup {
        /// The cgroup v2 directory.
        path: PathBuf,
        /// The network namespace (a file such as `/run/netns/NAME`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<PathBuf>,
    },
    /// The cgroup and network namespace of a process.
    Pid {
        /// The process.
        pid: i32,
    },
    /// The cgroup and network namespace of the process that sent the request.
    Job {
        /// The job's user (the one `sudo` was run by), whom the container runtime sockets
        /// are closed to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<u32>,
        /// Leave the container runtime sockets open to the job.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_docker: bool,
    },
}

/// The answer to any request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A one-line human summary of what was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The daemon's state (every request returns it, so a client never needs a second
    /// round trip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    /// A refusal.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// Where the audit lines sent to an OTLP collector went (`--otlp-endpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtlpStatus {
    /// The collector.
    pub endpoint: String,
    /// Lines the collector took.
    pub exported: u64,
    /// Lines dropped because the queue was full.
    pub dropped: u64,
    /// Lines in requests the collector refused for good.
    pub refused: u64,
    /// Lines the collector rejected in a partial success.
    pub rejected: u64,
    /// The last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl From<egressd_proxy::OtlpCounts> for OtlpStatus {
    fn from(c: egressd_proxy::OtlpCounts) -> Self {
        Self {
            endpoint: c.endpoint,
            exported: c.exported,
            dropped: c.dropped,
            refused: c.refused,
            rejected: c.rejected,
            last_error: c.last_error,
        }
    }
}

/// The daemon's state, as `egressd status` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's process id.
    pub pid: u32,
    /// When it started (RFC 3339, UTC).
    pub started: String,
    /// `sha256:<hex>` of the running policy's entries (as in the audit log's `arm`).
    pub policy_hash: String,
    /// Number of policy entries.
    pub policy_entries: usize,
    /// Successful reloads since start.
    pub reloads: u64,
    /// The last reload's error, when it failed (the previous policy stayed in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<String>,
    /// The trust bundle to point TLS clients at, when egressd intercepts TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// The audit log, when one is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<String>,
    /// Connections allowed since start (all attachments).
    pub allowed: u64,
    /// Connections denied since start (all attachments).
    pub denied: u64,
    /// Audit lines that could not be written (disk full...): lost, and counted here.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audit_unwritten: u64,
    /// The OTLP export of the audit, when the daemon sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpStatus>,
    /// The current attachments.
    pub attachments: Vec<AttachmentInfo>,
    /// Attachments of a daemon that died that could not be re-armed: still closed by their
    /// pinned programs until `egressd detach NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<String>,
}

/// One attachment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttachmentInfo {
    /// Its name (the `sandbox` of its audit records).
    pub name: String,
    /// The cgroup directory.
    pub cgroup: String,
    /// The network namespace, when not the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The proxy's IPv4 listener port (in that namespace's loopback).
    pub proxy_port: u16,
    /// The DNS listener port (in that namespace's loopback).
    pub dns_port: u16,
    /// When it was attached (RFC 3339, UTC).
    pub since: String,
    /// The named policy it runs under (the Kubernetes agent's `--policy-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde passes a reference"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Sends `request` to the daemon at `socket` and returns its answer.
///
/// # Errors
///
/// The socket cannot be reached (with a hint when the daemon is not running or the caller
/// is not root), or the answer is not a response.
pub fn send(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "is `egressd run` running?"
            }
            std::io::ErrorKind::PermissionDenied => "the control socket is root-only: use sudo",
            _ => "",
        };
        anyhow!(
            "connecting to the egressd daemon at {}: {e} {hint}",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    // A daemon refusing the caller may answer and close before reading everything: its
    // answer is still there to read, and says more than the failed write.
    let sent = stream.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    if answer.is_empty() {
        sent.context("sending the request to the daemon")?;
    }
    read.context("reading the daemon's answer")?;
    if answer.is_empty() {
        return Err(anyhow!(
            "the daemon closed the control connection without answering"
        ));
    }
    serde_json::from_str(&answer).context("the daemon's answer is not a control response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let attach = Request::Attach {
            target: Target::Cgroup {
                path: "/sys/fs/cgroup/x".into(),
                netns: None,
            },
            name: None,
        };
        assert_eq!(
            serde_json::to_string(&attach).unwrap(),
            r#"{"op":"attach","target":{"kind":"cgroup","path":"/sys/fs/cgroup/x"}}"#
        );
        let job: Request =
            serde_json::from_str(r#"{"op":"attach","target":{"kind":"job"},"name":"ci"}"#).unwrap();
        assert_eq!(
            job,
            Request::Attach {
                target: Target::Job {
                    user: None,
                    allow_docker: false
                },
                name: Some("ci".into())
            }
        );
        let detach: Request = serde_json::from_str(r#"{"op":"detach","all":true}"#).unwrap();
        assert_eq!(
            detach,
            Request::Detach {
                name: None,
                all: true
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format-disk"}"#).is_err());
    }
}
