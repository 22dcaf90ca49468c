//! [`FakeDocker`]: a stand-in for the Docker Engine API on a Unix socket (no Docker engine
//! runs on this machine), speaking the two calls egressd makes: `GET /events` (optionally
//! under a `/v1.NN` prefix) as a stream of newline-separated JSON events, and
//! `GET /containers/{id}/json` with the container's `State.Pid`. A test "starts a container"
//! by registering a process of its own with [`FakeDocker::add_container`] and emitting the
//! events Docker would ([`FakeDocker::start_event`], [`FakeDocker::die_event`]).

use std::{
    collections::HashMap,
    convert::Infallible,
    path::Path,
    sync::{Arc, Mutex, mpsc},
    thread,
};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{StatusCode, body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, Infallible>;

struct State {
    containers: Mutex<HashMap<String, i32>>,
    events: broadcast::Sender<Bytes>,
    subscribers: Mutex<usize>,
}

/// The stand-in Docker API; stops when dropped.
pub struct FakeDocker {
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeDocker {
    /// Serves the API on a new Unix socket at `path` (mode 0600, root's).
    pub fn start(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener =
            std::os::unix::net::UnixListener::bind(path).expect("binding the fake Docker socket");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let (events, _) = broadcast::channel(64);
        let state = Arc::new(State {
            containers: Mutex::new(HashMap::new()),
            events,
            subscribers: Mutex::new(0),
        });
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let served = Arc::clone(&state);
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).expect("registering the listener");
                ready_tx.send(()).expect("the test waits");
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let state = Arc::clone(&served);
                            tokio::spawn(async move {
                                let service = service_fn(move |req| {
                                    let state = Arc::clone(&state);
                                    async move { Ok::<_, Infallible>(answer(&state, req.uri().path())) }
                                });
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        ready_rx.recv().expect("the fake Docker API started");
        Self {
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Registers container `id` whose init process is `pid`.
    pub fn add_container(&self, id: &str, pid: u32) {
        self.state
            .containers
            .lock()
            .unwrap()
            .insert(id.to_owned(), i32::try_from(pid).expect("a pid"));
    }

    /// How many clients follow the events now.
    pub fn subscribers(&self) -> usize {
        *self.state.subscribers.lock().unwrap()
    }

    /// Emits Docker's `start` event for container `id`.
    pub fn start_event(&self, id: &str) {
        self.emit(id, "start");
    }

    /// Emits Docker's `die` event for container `id`.
    pub fn die_event(&self, id: &str) {
        self.emit(id, "die");
    }

    fn emit(&self, id: &str, action: &str) {
        let event = json!({
            "status": action,
            "id": id,
            "from": "busybox",
            "Type": "container",
            "Action": action,
            "Actor": {"ID": id, "Attributes": {"image": "busybox", "name": "test"}},
            "scope": "local",
            "time": 1_796_000_000,
            "timeNano": 1_796_000_000_000_000_000u64,
        });
        let _ = self.state.events.send(Bytes::from(format!("{event}\n")));
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request: the event stream, a container's description, or 404.
fn answer(state: &Arc<State>, path: &str) -> hyper::Response<Body> {
    // Clients may prefix the API version: /v1.47/events.
    let path = match path.strip_prefix("/v1.") {
        Some(rest) => rest.find('/').map_or(path, |i| &rest[i..]),
        None => path,
    };
    if path == "/events" {
        let receiver = state.events.subscribe();
        *state.subscribers.lock().unwrap() += 1;
        let stream = tokio_stream_from(receiver).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        let mut resp = hyper::Response::new(BodyExt::boxed(StreamBody::new(stream)));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    if let Some(id) = path
        .strip_prefix("/containers/")
        .and_then(|rest| rest.strip_suffix("/json"))
        && let Some(pid) = state.containers.lock().unwrap().get(id).copied()
    {
        let body = json!({"Id": id, "State": {"Status": "running", "Running": true, "Pid": pid}});
        return hyper::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    }
    let mut resp = hyper::Response::new(
        Full::new(Bytes::from_static(b"{\"message\":\"page not found\"}")).boxed(),
    );
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

/// The messages of `receiver` as a stream (lagged messages skipped).
fn tokio_stream_from(
    receiver: broadcast::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::unfold(receiver, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(b) => return Some((b, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
