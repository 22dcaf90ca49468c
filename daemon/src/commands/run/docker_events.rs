//! Containers a job starts, attached with the job's policy: for a job attached with
//! `attach --job --allow-docker`, the daemon follows Docker's events API (`GET /events`, over
//! the Docker socket) and attaches every container that starts (its init process's cgroup and
//! network namespace, as `attach --pid` does) under the name `<job>-docker-<id>`, and
//! detaches it when it dies. So `docker run --network host ...` from the job is firewalled
//! too.
//!
//! # Limit
//!
//! Docker reports `start` after the container's process runs: the container is attached a
//! few milliseconds after it starts, and what it sends in between is not firewalled. Without
//! `--allow-docker` the Docker socket is closed to the job instead (`runtime_acl.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::daemon::Daemon;
use crate::control::Target;

/// The events asked for: containers starting and dying.
const EVENTS: &str = "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%2C%22event%22%3A%5B%22start%22%2C%22die%22%5D%7D";

/// The longest event line read (Docker's are a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

/// Follows the events at `socket` until `stop`, reconnecting after a second when the
/// connection drops.
pub async fn watch(daemon: Arc<Daemon>, socket: PathBuf, job: String, stop: CancellationToken) {
    loop {
        let followed = tokio::select! {
            () = stop.cancelled() => return,
            r = follow(&daemon, &socket, &job) => r,
        };
        if let Err(e) = followed {
            tracing::warn!("following Docker's events at {}: {e:#}", socket.display());
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The attachment name of container `id` of `job`.
pub fn container_name(job: &str, id: &str) -> String {
    let short: String = id.chars().take(12).collect();
    format!("{job}-docker-{short}")
}

async fn follow(daemon: &Arc<Daemon>, socket: &Path, job: &str) -> anyhow::Result<()> {
    let body = get(socket, EVENTS).await?;
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the event stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(end + 1);
            handle(daemon, socket, job, &line).await;
        }
        if buf.len() > MAX_LINE {
            bail!("an event line is longer than {MAX_LINE} bytes");
        }
    }
    bail!("the event stream ended")
}

/// Attaches a container that started, detaches one that died.
async fn handle(daemon: &Arc<Daemon>, socket: &Path, job: &str, line: &[u8]) {
    let Ok(event) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    if event["Type"] != "container" {
        return;
    }
    let action = event["Action"]
        .as_str()
        .or_else(|| event["status"].as_str())
        .unwrap_or_default();
    let Some(id) = event["Actor"]["ID"]
        .as_str()
        .or_else(|| event["id"].as_str())
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
    else {
        return;
    };
    let name = container_name(job, id);
    match action {
        "start" => {
            let attached = match inspect_pid(socket, id).await {
                Ok(pid) => daemon
                    .attach(Target::Pid { pid }, Some(name.clone()), None)
                    .await
                    .map(|message| format!("{message} (container {id} of {job})")),
                Err(e) => Err(e),
            };
            match attached {
                Ok(message) => eprintln!("egressd: {message}"),
                Err(e) => eprintln!("egressd: container {id} of {job} NOT attached: {e:#}"),
            }
        }
        "die" => {
            if let Ok(message) = daemon.detach(Some(&name), false).await {
                eprintln!("egressd: {message} (container {id} of {job} died)");
            }
        }
        _ => {}
    }
}

/// The host pid of container `id`'s init process (`GET /containers/{id}/json`).
async fn inspect_pid(socket: &Path, id: &str) -> anyhow::Result<i32> {
    let body = get(socket, &format!("/containers/{id}/json")).await?;
    let bytes = http_body_util::Limited::new(body, 1 << 20)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the container's description: {e}"))?
        .to_bytes();
    let inspect: Value =
        serde_json::from_slice(&bytes).context("the container's description is not JSON")?;
    inspect["State"]["Pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 0)
        .context("the container has no running process")
}

/// `GET path` on the Docker socket; the response body, after a success status.
async fn get(socket: &Path, path: &str) -> anyhow::Result<hyper::body::Incoming> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with Docker")?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("GET {path}"))?;
    if !response.status().is_success() {
        bail!("GET {path}: {}", response.status());
    }
    Ok(response.into_body())
}
