//! A fake Kubernetes API server (Pods only) for the node agent's end-to-end tests: plain
//! HTTP/1.1 on 127.0.0.1, on its own thread and runtime, speaking what kube-rs 5's `watcher`
//! (kube-runtime 5.0.0, default `ListWatch` strategy) sends and expects:
//!
//! 1. `GET /api/v1/pods?&fieldSelector=F&labelSelector=L&limit=500` (or
//!    `/api/v1/namespaces/{ns}/pods?..`), then the same with `&continue=TOKEN` while the
//!    `PodList` carries `metadata.continue`; the list's `metadata.resourceVersion` is the RV.
//! 2. `GET ..?&watch=true&timeoutSeconds=290&fieldSelector=F&labelSelector=L&allowWatchBookmarks=true&resourceVersion=RV`:
//!    newline-delimited `{"type":..,"object":..}` events; it keeps the `resourceVersion` of
//!    every object and `BOOKMARK`.
//! 3. When the stream ends (timeout, dropped connection) it watches again from that RV. An
//!    `ERROR` event whose `Status` has `code: 410` sends it back to 1 (a relist).
//!
//! A watch at RV `0` (or none) starts with the current objects as `ADDED`; with
//! `sendInitialEvents=true` (kube-rs `streaming_lists()`) a `BOOKMARK` annotated
//! `k8s.io/initial-events-end` follows them.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    convert::Infallible,
    hash::{DefaultHasher, Hash, Hasher},
    io,
    ops::Bound,
    path::Path,
    sync::{Arc, Condvar, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{StatusCode, body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{mpsc::UnboundedSender, oneshot, watch};

/// The bearer token the fake accepts (the one [`FakeKubeApi::write_kubeconfig`] writes).
pub const TOKEN: &str = "egressd-test-token";
/// How many changes the event log keeps; watches from an older RV get `410 Expired`.
const LOG_LIMIT: usize = 1000;
/// How often a watch with `allowWatchBookmarks=true` gets a `BOOKMARK`.
const BOOKMARK_EVERY: Duration = Duration::from_secs(2);
/// The field selectors the fake supports (the real apiserver answers others with 400).
const FIELDS: [&str; 4] = [
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
];

type Body = BoxBody<Bytes, io::Error>;
type Response = hyper::Response<Body>;
type Key = (String, String);
type Lines = UnboundedSender<Result<Frame<Bytes>, io::Error>>;

/// One request the fake saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeRequest {
    /// The HTTP method (`GET`).
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// Whether `Authorization: Bearer egressd-test-token` was present.
    pub authorized: bool,
}

impl KubeRequest {
    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a watch (`watch=true`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch"), Some("true" | "1"))
    }
}

/// One change in the event log; `new` is `None` for a deletion.
struct Change {
    rv: u64,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Clone, Copy)]
enum End {
    Drop,
    Expire,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<Key, Value>,
    rv: u64,
    log: VecDeque<Change>,
    /// Watches (and continue tokens) from an RV below this get `410 Expired`.
    compacted: u64,
    /// Bumped by `drop_watches`/`expire_watches`; `ends[g]` ended the watches of generation g.
    generation: usize,
    ends: Vec<End>,
    /// Open watch streams: id → generation.
    watchers: HashMap<u64, usize>,
    next_id: u64,
    requests: Vec<KubeRequest>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    tick: watch::Sender<u64>,
}

impl Shared {
    fn poke(&self) {
        self.changed.notify_all();
        self.tick.send_modify(|t| *t += 1);
    }
}

/// The fake API server; stops (closing every connection) when dropped.
pub struct FakeKubeApi {
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeKubeApi {
    /// Serves the API on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("a bound address");
        let state = State {
            rv: 1,
            ..State::default()
        };
        let (state, changed, tick) = (Mutex::new(state), Condvar::new(), watch::channel(0).0);
        let shared = Arc::new(Shared {
            state,
            changed,
            tick,
        });
        let (stop, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let served = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("fake kube-apiserver {addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                rt.expect("a runtime").block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener);
                    let listener = listener.expect("registering the listener");
                    let _ = ready_tx.send(());
                    serve(listener, served, stop_rx).await;
                });
            })
            .expect("spawning the fake kube-apiserver thread");
        ready_rx.recv().expect("the fake kube-apiserver started");
        Self {
            shared,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig at `path`: cluster `fake` (server [`Self::url`]), user `fake` with
    /// token [`TOKEN`], context `fake` (namespace `default`) as the current context.
    pub fn write_kubeconfig(&self, path: &Path) {
        let config = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user:\n    token: {TOKEN}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n",
            self.url()
        );
        std::fs::write(path, config).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Creates or replaces a Pod (keyed by `metadata.namespace`, default `default`, and
    /// `metadata.name`): `ADDED` if new, else `MODIFIED`. Bumps the resourceVersion and sets
    /// `metadata.resourceVersion`, and `metadata.uid` when absent (kept across updates).
    pub fn apply_pod(&self, mut pod: Value) {
        let name = pod["metadata"]["name"]
            .as_str()
            .expect("apply_pod: metadata.name")
            .to_owned();
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        pod["metadata"]["namespace"] = json!(ns);
        self.commit((ns, name), Some(pod));
    }

    /// Deletes a Pod: a `DELETED` event with its last state (at the new resourceVersion).
    /// Nothing happens when there is no such Pod.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.commit((namespace.to_owned(), name.to_owned()), None);
    }

    fn commit(&self, key: Key, new: Option<Value>) {
        let mut st = self.shared.state.lock().unwrap();
        let old = st.pods.remove(&key);
        if old.is_none() && new.is_none() {
            return;
        }
        st.rv += 1;
        let rv = st.rv;
        let new = new.map(|mut pod| {
            if pod["metadata"]["uid"].is_null() {
                pod["metadata"]["uid"] = match &old {
                    Some(old) => old["metadata"]["uid"].clone(),
                    None => json!(uid_for(&key.0, &key.1)),
                };
            }
            pod["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.pods.insert(key, pod.clone());
            pod
        });
        st.log.push_back(Change { rv, old, new });
        if st.log.len() > LOG_LIMIT {
            st.compacted = st.log.pop_front().map_or(0, |c| c.rv);
        }
        drop(st);
        self.shared.poke();
    }

    /// Ends every open watch stream abruptly, as a dropped connection (no final chunk):
    /// kube-rs watches again from the last resourceVersion it saw.
    pub fn drop_watches(&self) {
        self.end_watches(End::Drop);
    }

    /// Compacts the event log: every open watch gets an `ERROR` event with a `410 Expired`
    /// `Status` and ends, and so does every later watch from an older RV, so kube-rs relists
    /// (the relist's RV is watchable).
    pub fn expire_watches(&self) {
        self.end_watches(End::Expire);
    }

    fn end_watches(&self, end: End) {
        let mut st = self.shared.state.lock().unwrap();
        if let End::Expire = end {
            st.rv += 1;
            st.compacted = st.rv;
            st.log.clear();
        }
        st.ends.push(end);
        st.generation += 1;
        drop(st);
        self.shared.poke();
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<KubeRequest> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Waits until at least `n` watch streams are open (streams ended by
    /// [`Self::drop_watches`]/[`Self::expire_watches`] no longer count); `false` on timeout.
    pub fn wait_for_watchers(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if st
                .watchers
                .values()
                .filter(|g| **g == st.generation)
                .count()
                >= n
            {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            st = self.shared.changed.wait_timeout(st, left).unwrap().0;
        }
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A minimal valid v1 Pod: one container `runner` (image `x`), phase `Pending`, a uid derived
/// from the namespace and name.
pub fn pod(
    namespace: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Value {
    let map = |pairs: &[(&str, &str)]| {
        let map = pairs.iter().map(|(k, v)| (k.to_string(), json!(v)));
        map.collect::<serde_json::Map<_, _>>()
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid_for(namespace, name),
            "labels": map(labels), "annotations": map(annotations),
        },
        "spec": {"nodeName": node, "containers": [{"name": "runner", "image": "x"}]},
        "status": {"phase": "Pending"},
    })
}

fn uid_for(namespace: &str, name: &str) -> String {
    let mut h = DefaultHasher::new();
    (namespace, name).hash(&mut h);
    let x = h.finish();
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        x >> 32,
        x >> 48,
        x & 0xffff_ffff_ffff
    )
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = Arc::clone(&shared);
        let service = service_fn(move |req| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(handle(&shared, &req)) }
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        tokio::spawn(connection);
    }
}

fn reply(code: StatusCode, body: Body) -> Response {
    let response = hyper::Response::builder().status(code);
    let response = response.header(hyper::header::CONTENT_TYPE, "application/json");
    response.body(body).expect("a valid response")
}

fn respond(code: StatusCode, body: &Value) -> Response {
    let full = Full::new(Bytes::from(body.to_string()));
    reply(code, full.map_err(|e: Infallible| match e {}).boxed())
}

fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code.as_u16()})
}

fn fail(code: StatusCode, reason: &str, message: &str) -> Response {
    respond(code, &status(code, reason, message))
}

fn bad_request(message: &str) -> Response {
    fail(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn handle<B>(shared: &Arc<Shared>, req: &hyper::Request<B>) -> Response {
    let query = req.uri().query().unwrap_or("").as_bytes();
    let bearer = format!("Bearer {TOKEN}");
    let auth = req.headers().get_all(hyper::header::AUTHORIZATION);
    let request = KubeRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: url::form_urlencoded::parse(query).into_owned().collect(),
        authorized: auth.iter().any(|v| v.as_bytes() == bearer.as_bytes()),
    };
    shared.state.lock().unwrap().requests.push(request.clone());
    if !request.authorized {
        return fail(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if req.method() != hyper::Method::GET {
        return fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only GET",
        );
    }
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["version"] => respond(
            StatusCode::OK,
            &json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "0".repeat(40),
            "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z",
            "goVersion": "go1.24.2", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        ["api", "v1", "pods"] => collection(shared, &request, None),
        ["api", "v1", "namespaces", ns, "pods"] => collection(shared, &request, Some(ns)),
        ["api", "v1", "namespaces", ns, "pods", name] => {
            let st = shared.state.lock().unwrap();
            match st.pods.get(&(ns.to_string(), name.to_string())) {
                Some(pod) => respond(StatusCode::OK, pod),
                None => fail(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{name}\" not found"),
                ),
            }
        }
        _ => fail(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn collection(shared: &Arc<Shared>, req: &KubeRequest, ns: Option<&str>) -> Response {
    match Selector::parse(ns, req.param("fieldSelector"), req.param("labelSelector")) {
        Err(e) => bad_request(&e),
        Ok(selector) if req.is_watch() => watch(shared, req, selector),
        Ok(selector) => list(shared, req, &selector),
    }
}

fn list(shared: &Shared, req: &KubeRequest, selector: &Selector) -> Response {
    let limit = match req.param("limit").map(str::parse::<usize>) {
        None | Some(Ok(0)) => usize::MAX,
        Some(Ok(n)) => n,
        Some(Err(_)) => return bad_request("invalid limit"),
    };
    let st = shared.state.lock().unwrap();
    // A continue token is `RV/namespace/name`: the snapshot RV and the last key listed.
    let (rv, after) = match req.param("continue").filter(|c| !c.is_empty()) {
        None => (st.rv, Bound::Unbounded),
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let (Some(Ok(rv)), Some(ns), Some(name)) = (
                parts.next().map(str::parse::<u64>),
                parts.next(),
                parts.next(),
            ) else {
                return bad_request("invalid continue token");
            };
            if rv < st.compacted {
                return fail(
                    StatusCode::GONE,
                    "Expired",
                    "the continue parameter is too old",
                );
            }
            (rv, Bound::Excluded((ns.to_owned(), name.to_owned())))
        }
    };
    let range = st.pods.range((after, Bound::Unbounded));
    let mut matching = range.filter(|(_, p)| selector.matches(p));
    let items: Vec<(&Key, &Value)> = matching.by_ref().take(limit).collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let (Some(((ns, name), _)), Some(_)) = (items.last(), matching.next()) {
        metadata["continue"] = json!(format!("{rv}/{ns}/{name}"));
    }
    let items: Vec<&Value> = items.into_iter().map(|(_, p)| p).collect();
    let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items});
    respond(StatusCode::OK, &list)
}

fn event(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

fn expired(rv: u64, compacted: u64) -> Bytes {
    let message = format!("too old resource version: {rv} ({compacted})");
    event("ERROR", &status(StatusCode::GONE, "Expired", &message))
}

fn bookmark(rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event(
        "BOOKMARK",
        &json!({"kind": "Pod", "apiVersion": "v1", "metadata": metadata}),
    )
}

fn watch(shared: &Arc<Shared>, req: &KubeRequest, selector: Selector) -> Response {
    let timeout = match req.param("timeoutSeconds").map(str::parse::<u64>) {
        None => 3600,
        Some(Ok(t)) => t,
        Some(Err(_)) => return bad_request("invalid timeoutSeconds"),
    };
    let from = match req
        .param("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0")
    {
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return bad_request(&format!("invalid resource version: {rv}")),
        },
        None => None,
    };
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut st = shared.state.lock().unwrap();
    let send = |line| drop(tx.send(Ok(Frame::data(line))));
    let cursor = match from {
        Some(rv) if rv < st.compacted => {
            send(expired(rv, st.compacted));
            None
        }
        Some(rv) => Some(rv),
        None => {
            // Any RV: the current objects as ADDED, then the changes.
            st.pods
                .values()
                .filter(|p| selector.matches(p))
                .for_each(|p| send(event("ADDED", p)));
            if req.param("sendInitialEvents") == Some("true") && bookmarks {
                send(bookmark(st.rv, true));
            }
            Some(st.rv)
        }
    };
    if let Some(cursor) = cursor {
        let (id, generation) = (st.next_id, st.generation);
        st.next_id += 1;
        st.watchers.insert(id, generation);
        shared.changed.notify_all();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let shared = Arc::clone(shared);
        let pump = Pump {
            shared,
            id,
            generation,
            selector,
            cursor,
            bookmarks,
            tx,
        };
        tokio::spawn(pump.run(deadline));
    }
    drop(st);
    let lines =
        futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|f| (f, rx)) });
    reply(StatusCode::OK, BodyExt::boxed(StreamBody::new(lines)))
}

/// Feeds one watch stream from the event log; unregisters the watch when it ends.
struct Pump {
    shared: Arc<Shared>,
    id: u64,
    generation: usize,
    selector: Selector,
    cursor: u64,
    bookmarks: bool,
    tx: Lines,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().watchers.remove(&self.id);
        self.shared.changed.notify_all();
    }
}

impl Pump {
    async fn run(mut self, deadline: tokio::time::Instant) {
        let mut tick = self.shared.tick.subscribe();
        let start = tokio::time::Instant::now() + BOOKMARK_EVERY;
        let mut bookmarks = tokio::time::interval_at(start, BOOKMARK_EVERY);
        loop {
            tick.borrow_and_update();
            let (lines, end) = self.pending();
            for line in lines {
                if self.tx.send(Ok(Frame::data(line))).is_err() {
                    return;
                }
            }
            match end {
                Some(End::Drop) => {
                    let aborted = io::Error::new(io::ErrorKind::ConnectionAborted, "dropped");
                    let _ = self.tx.send(Err(aborted)); // hyper closes without the last chunk
                    return;
                }
                Some(End::Expire) => return,
                None => {}
            }
            let line = tokio::select! {
                _ = tick.changed() => continue,
                () = tokio::time::sleep_until(deadline) => return,
                () = self.tx.closed() => return,
                _ = bookmarks.tick(), if self.bookmarks => bookmark(self.cursor, false),
            };
            if self.tx.send(Ok(Frame::data(line))).is_err() {
                return;
            }
        }
    }

    /// The lines to send since the cursor, and whether the watch must end.
    fn pending(&mut self) -> (Vec<Bytes>, Option<End>) {
        let st = self.shared.state.lock().unwrap();
        if st.generation != self.generation {
            return match st.ends[self.generation] {
                End::Expire => (vec![expired(self.cursor, st.compacted)], Some(End::Expire)),
                End::Drop => (Vec::new(), Some(End::Drop)),
            };
        }
        if self.cursor < st.compacted {
            return (vec![expired(self.cursor, st.compacted)], Some(End::Expire));
        }
        let mut lines = Vec::new();
        for change in st.log.iter().filter(|c| c.rv > self.cursor) {
            let selected = |p: &Option<Value>| p.as_ref().is_some_and(|p| self.selector.matches(p));
            match (
                selected(&change.old),
                selected(&change.new),
                &change.old,
                &change.new,
            ) {
                (false, true, _, Some(new)) => lines.push(event("ADDED", new)),
                (true, true, _, Some(new)) => lines.push(event("MODIFIED", new)),
                (true, false, Some(old), _) => {
                    // Deleted, or no longer selected (as the apiserver does): the last state.
                    let mut old = old.clone();
                    old["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                    lines.push(event("DELETED", &old));
                }
                _ => {}
            }
        }
        self.cursor = self.cursor.max(st.rv);
        (lines, None)
    }
}

/// One requirement of a field or label selector.
enum Op {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// The field and label selectors of a request (its namespace is a field requirement).
struct Selector {
    fields: Vec<(String, Op)>,
    labels: Vec<(String, Op)>,
}

impl Selector {
    fn parse(ns: Option<&str>, fields: Option<&str>, labels: Option<&str>) -> Result<Self, String> {
        let namespace = ns.map(|ns| ("metadata.namespace".to_owned(), Op::Eq(ns.to_owned())));
        let mut selector = Self {
            fields: namespace.into_iter().collect(),
            labels: Vec::new(),
        };
        for term in fields
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.trim().is_empty())
        {
            let (key, op) = match equality(term) {
                Some((key, op)) if FIELDS.contains(&key) => (key, op),
                Some((key, _)) => return Err(format!("field label not supported: {key}")),
                None => return Err(format!("invalid field selector: {term}")),
            };
            selector.fields.push((key.to_owned(), op));
        }
        // Split the label selector at the commas outside parentheses.
        let (labels, mut depth, mut start, mut terms) = (labels.unwrap_or(""), 0, 0, Vec::new());
        for (i, c) in labels.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    terms.push(&labels[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        terms.push(&labels[start..]);
        for term in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
            let invalid = || format!("unable to parse requirement: {term}");
            let (key, op) = if let Some(key) = term.strip_prefix('!') {
                (key.trim(), Op::NotExists)
            } else if let Some((head, values)) = term.split_once('(') {
                let values = values.strip_suffix(')').ok_or_else(invalid)?;
                let values = values.split(',').map(|v| v.trim().to_owned()).collect();
                match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                    [key, "in"] => (*key, Op::In(values)),
                    [key, "notin"] => (*key, Op::NotIn(values)),
                    _ => return Err(invalid()),
                }
            } else {
                equality(term).unwrap_or((term, Op::Exists))
            };
            let valid = |c: char| c.is_ascii_alphanumeric() || "-_./".contains(c);
            if key.is_empty() || !key.chars().all(valid) {
                return Err(invalid());
            }
            selector.labels.push((key.to_owned(), op));
        }
        Ok(selector)
    }

    fn matches(&self, pod: &Value) -> bool {
        let field = |f: &str| {
            pod.pointer(&format!("/{}", f.replace('.', "/")))
                .and_then(Value::as_str)
        };
        let label = |k: &str| pod["metadata"]["labels"].get(k).and_then(Value::as_str);
        self.fields
            .iter()
            .all(|(f, op)| op.holds(Some(field(f).unwrap_or(""))))
            && self.labels.iter().all(|(k, op)| op.holds(label(k)))
    }
}

/// `k!=v`, `k==v` or `k=v`.
fn equality(term: &str) -> Option<(&str, Op)> {
    let (key, op): (&str, fn(String) -> Op) = if let Some((k, _)) = term.split_once("!=") {
        (k, Op::Ne)
    } else {
        (term.split_once('=')?.0, Op::Eq)
    };
    let value = term[key.len()..].trim_start_matches(['!', '=']);
    Some((key.trim(), op(value.trim().to_owned())))
}

impl Op {
    fn holds(&self, value: Option<&str>) -> bool {
        match self {
            Op::Eq(v) => value == Some(v),
            Op::Ne(v) => value != Some(v),
            Op::In(vs) => value.is_some_and(|x| vs.iter().any(|v| v == x)),
            Op::NotIn(vs) => value.is_none_or(|x| vs.iter().all(|v| v != x)),
            Op::Exists => value.is_some(),
            Op::NotExists => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;

    use super::*;

    /// A response read with plain blocking HTTP/1.1: a JSON body or a stream of watch events.
    struct Resp {
        status: u16,
        length: Option<usize>,
        reader: BufReader<TcpStream>,
        buf: String,
    }

    fn get(api: &FakeKubeApi, target: &str, token: bool) -> Resp {
        let mut stream = TcpStream::connect(api.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let auth = if token {
            format!("Authorization: Bearer {TOKEN}\r\n")
        } else {
            String::new()
        };
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: k\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let (mut reader, mut line) = (BufReader::new(stream), String::new());
        reader.read_line(&mut line).unwrap();
        let status = line[9..12].parse().unwrap();
        let mut length = None;
        while line.trim() != "" {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let lower = line.trim().to_ascii_lowercase();
            length = length.or(lower
                .strip_prefix("content-length: ")
                .map(|n| n.parse().unwrap()));
        }
        Resp {
            status,
            length,
            reader,
            buf: String::new(),
        }
    }

    impl Resp {
        fn json(mut self) -> Value {
            let mut body = vec![0; self.length.expect("a content-length")];
            self.reader.read_exact(&mut body).unwrap();
            serde_json::from_slice(&body).unwrap()
        }

        /// The next event; `Ok(None)` at a clean end, `Err` when the connection dropped.
        fn event(&mut self) -> Result<Option<Value>, ()> {
            loop {
                if let Some(i) = self.buf.find('\n') {
                    let line: String = self.buf.drain(..=i).collect();
                    return Ok(Some(serde_json::from_str(&line).unwrap()));
                }
                let mut size = String::new();
                if self.reader.read_line(&mut size).unwrap() == 0 {
                    return Err(());
                }
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut data = vec![0; size + 2];
                self.reader.read_exact(&mut data).unwrap();
                if size == 0 {
                    return Ok(None);
                }
                self.buf
                    .push_str(std::str::from_utf8(&data[..size]).unwrap());
            }
        }

        /// The next event that is not a BOOKMARK, as "TYPE name rv".
        fn change(&mut self) -> String {
            loop {
                let e = self.event().unwrap().expect("an event");
                if e["type"] != "BOOKMARK" {
                    let meta = &e["object"]["metadata"];
                    let (name, rv) = (&meta["name"], &meta["resourceVersion"]);
                    return format!("{} {} {}", e["type"], name, rv).replace('"', "");
                }
            }
        }
    }

    fn names(list: &Value) -> Vec<&str> {
        let items = list["items"].as_array().unwrap().iter();
        items
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect()
    }

    /// RV 6 after these five pods.
    fn seeded() -> FakeKubeApi {
        let api = FakeKubeApi::start();
        api.apply_pod(pod("ci", "a1", "node-a", &[("app", "x")], &[]));
        api.apply_pod(pod("ci", "a2", "node-a", &[("app", "y")], &[("k", "v")]));
        api.apply_pod(pod("ci", "a3", "node-a", &[], &[]));
        api.apply_pod(pod("other", "a4", "node-a", &[("app", "x")], &[]));
        api.apply_pod(pod("ci", "b1", "node-b", &[("app", "x")], &[]));
        api
    }

    #[test]
    fn kube_list_selectors_pagination_and_401() {
        let api = seeded();
        let q = "fieldSelector=spec.nodeName%3Dnode-a&labelSelector=app%20in%20(x%2Cy)&limit=2";
        let first = get(&api, &format!("/api/v1/pods?&{q}"), true).json();
        assert_eq!(
            (names(&first), &first["metadata"]["resourceVersion"]),
            (vec!["a1", "a2"], &json!("6"))
        );
        let token = first["metadata"]["continue"].as_str().unwrap();
        let token: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
        let second = get(&api, &format!("/api/v1/pods?&{q}&continue={token}"), true).json();
        assert_eq!(names(&second), ["a4"]);
        assert!(second["metadata"].get("continue").is_none());
        let list = |sel: &str| get(&api, &format!("/api/v1/namespaces/ci/pods?{sel}"), true).json();
        assert_eq!(names(&list("labelSelector=!app")), ["a3"]);
        assert_eq!(names(&list("labelSelector=app!%3Dx")), ["a2", "a3"]);
        assert_eq!(names(&list("labelSelector=app%20notin%20(x),app")), ["a2"]);
        assert_eq!(
            names(&list(
                "labelSelector=app%3D%3Dx&fieldSelector=spec.nodeName!%3Dnode-a"
            )),
            ["b1"]
        );
        assert_eq!(
            names(&list(
                "fieldSelector=metadata.name%3Da2,metadata.namespace%3Dci"
            )),
            ["a2"]
        );
        let a2 = get(&api, "/api/v1/namespaces/ci/pods/a2", true).json();
        assert_eq!(a2["metadata"]["annotations"]["k"], "v");
        for bad in [
            "labelSelector=app%20in%20(x",
            "fieldSelector=spec.bogus%3D1",
            "limit=x",
            "watch=true&resourceVersion=x",
        ] {
            assert_eq!(
                get(&api, &format!("/api/v1/pods?{bad}"), true).status,
                400,
                "{bad}"
            );
        }
        assert_eq!(get(&api, "/version", true).json()["major"], "1");
        let denied = get(&api, "/api/v1/pods?limit=500", false);
        assert_eq!(denied.status, 401);
        assert_eq!(denied.json()["reason"], "Unauthorized");
        let last = api.requests().pop().unwrap();
        assert_eq!((last.authorized, last.param("limit")), (false, Some("500")));
    }

    #[test]
    fn kube_watch_replayed_and_live() {
        let api = seeded();
        let q = "fieldSelector=spec.nodeName%3Dnode-a&labelSelector=app&allowWatchBookmarks=true";
        let target = format!(
            "/api/v1/namespaces/ci/pods?&watch=true&timeoutSeconds=290&{q}&resourceVersion=2"
        );
        let mut w = get(&api, &target, true);
        assert_eq!(w.change(), "ADDED a2 3"); // replayed from the log
        assert!(api.wait_for_watchers(1, Duration::from_secs(10)));
        assert!(api.requests().last().unwrap().is_watch());
        api.apply_pod(pod("ci", "a5", "node-a", &[("app", "z")], &[]));
        assert_eq!(w.change(), "ADDED a5 7");
        api.apply_pod(pod(
            "ci",
            "a5",
            "node-a",
            &[("app", "z"), ("more", "1")],
            &[],
        ));
        assert_eq!(w.change(), "MODIFIED a5 8");
        api.apply_pod(pod("ci", "a5", "node-a", &[], &[])); // leaves the label selector
        assert_eq!(w.change(), "DELETED a5 9");
        api.apply_pod(pod("ci", "b1", "node-b", &[("app", "x")], &[("n", "1")])); // never selected
        api.delete_pod("ci", "a1");
        assert_eq!(w.change(), "DELETED a1 11");
    }

    #[test]
    fn kube_watch_timeout_and_bookmarks() {
        let api = seeded();
        let target =
            "/api/v1/pods?watch=true&timeoutSeconds=3&allowWatchBookmarks=true&resourceVersion=6";
        let mut w = get(&api, target, true);
        let bookmark = w.event().unwrap().unwrap();
        assert_eq!(
            (
                &bookmark["type"],
                &bookmark["object"]["metadata"]["resourceVersion"]
            ),
            (&json!("BOOKMARK"), &json!("6"))
        );
        while let Some(e) = w.event().expect("the timeout ends the stream cleanly") {
            assert_eq!(e["type"], "BOOKMARK");
        }
    }

    #[test]
    fn kube_expire_and_drop() {
        let api = seeded();
        let target =
            |rv: &str| format!("/api/v1/pods?&watch=true&timeoutSeconds=290&resourceVersion={rv}");
        let mut open = get(&api, &target("6"), true);
        assert!(api.wait_for_watchers(1, Duration::from_secs(10)));
        api.expire_watches();
        let error = open.event().unwrap().unwrap();
        assert_eq!(
            (&error["type"], &error["object"]["code"]),
            (&json!("ERROR"), &json!(410))
        );
        assert_eq!(error["object"]["reason"], "Expired");
        assert_eq!(open.event(), Ok(None));
        let mut stale = get(&api, &target("6"), true);
        assert_eq!(stale.event().unwrap().unwrap()["object"]["code"], 410);
        assert_eq!(stale.event(), Ok(None));
        // The relist's RV is watchable; a dropped watch ends without the last chunk.
        let list = get(&api, "/api/v1/pods?limit=500", true).json();
        let mut fresh = get(
            &api,
            &target(list["metadata"]["resourceVersion"].as_str().unwrap()),
            true,
        );
        assert!(api.wait_for_watchers(1, Duration::from_secs(10)));
        api.apply_pod(pod("ci", "a9", "node-a", &[], &[]));
        assert_eq!(fresh.change(), "ADDED a9 8");
        api.drop_watches();
        assert!(!api.wait_for_watchers(1, Duration::from_millis(10)));
        assert_eq!(fresh.event(), Err(()));
    }
}
