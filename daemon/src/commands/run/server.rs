//! The control socket: root-only by file mode and, for every connection, by the peer's
//! credentials (`SO_PEERCRED`), so a sandboxed process can neither connect nor pass as root.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::daemon::Daemon;
use crate::control::{Request, Response};

/// The longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused (non-root) client's request is waited for before the refusal.
const REFUSAL_DRAIN: Duration = Duration::from_secs(2);

/// Binds the control socket at `path` (mode 0600, its directory created 0755 when missing).
/// A socket file left by a daemon that died is replaced; one a live daemon answers on is an
/// error.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another egressd daemon is listening on {} (stop it, or pass --control-socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    // Created with the umask, then narrowed before anyone is told it exists.
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} root-only", path.display()))?;
    Ok(listener)
}

/// Serves one control connection: one request, one response.
pub async fn handle(daemon: Arc<Daemon>, stream: UnixStream) {
    let peer = stream.peer_cred().ok();
    let (read, mut write) = stream.into_split();
    let response = match peer {
        Some(cred) if cred.uid() == 0 => {
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(MAX_REQUEST));
            match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(_)) if line.ends_with('\n') => match serde_json::from_str(&line) {
                    Ok(request) => dispatch(&daemon, request, cred.pid()).await,
                    Err(e) => Response::failed(format!("not a control request: {e}")),
                },
                Ok(Ok(_)) => Response::failed(format!(
                    "the request must be one JSON line of at most {MAX_REQUEST} bytes"
                )),
                Ok(Err(e)) => Response::failed(format!("reading the request: {e}")),
                Err(_) => Response::failed("no request within 10 s"),
            }
        }
        Some(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "control connection from a non-root process refused"
            );
            // Take (and ignore) the request first, so the refusal is what the client reads,
            // not a broken pipe from a connection closed under its write.
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(MAX_REQUEST));
            let _ = tokio::time::timeout(REFUSAL_DRAIN, reader.read_line(&mut line)).await;
            Response::failed("permission denied: the egressd control socket is for root only")
        }
        None => Response::failed("the caller's credentials could not be read"),
    };
    if let Ok(mut bytes) = serde_json::to_vec(&response) {
        bytes.push(b'\n');
        let _ = write.write_all(&bytes).await;
    }
}

async fn dispatch(daemon: &Arc<Daemon>, request: Request, caller: Option<i32>) -> Response {
    let result = match request {
        Request::Attach { target, name } => {
            let docker_job = match &target {
                crate::control::Target::Job {
                    allow_docker: true, ..
                } => Some(name.clone().unwrap_or_else(|| "job".to_owned())),
                _ => None,
            };
            let attached = daemon.attach(target, name, caller).await;
            match (attached, docker_job) {
                (Ok(message), Some(job)) => {
                    Ok(format!("{message}; {}", daemon.watch_docker(&job).await))
                }
                (other, _) => other,
            }
        }
        Request::Detach { name, all } => daemon.detach(name.as_deref(), all).await,
        Request::Status => Ok("running".to_owned()),
        Request::Reload => daemon.reload().await,
    };
    match &result {
        Ok(message) => tracing::info!("control: {message}"),
        Err(e) => tracing::warn!("control request refused: {e:#}"),
    }
    daemon.respond(result).await
}
