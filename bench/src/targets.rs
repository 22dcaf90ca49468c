//! The targets of the comparison: how each is configured, started, reached and stopped.
//!
//! Every proxy runs in the client namespace and listens on its loopback; the client runs
//! there too and dials the proxy explicitly (HAProxy and nginx in front of the upstream by
//! SNI, Squid and mitmproxy through `CONNECT`). egressd runs there as `egressd exec`, whose
//! sandbox (a fresh namespace with no route out) holds the client: the client dials the
//! upstream's address and egressd's kernel programs bring it to the proxy. So every target
//! adds the same hops: client -> loopback -> proxy -> veth -> upstream; `direct` dials the
//! upstream over the veth.
//!
//! The configurations are each tool's ordinary way to do the job, with limits raised for
//! 10,000 connections and timeouts long enough for idle connections to stay open:
//!
//! - HAProxy: `mode tcp`, `req_ssl_sni` allowlist, no logging;
//! - nginx: `stream` with `ssl_preread`, a `map` of allowed SNI names;
//! - Squid: AWF's `squid.conf` essentials (`shared/reference/awf.md` §3.2, §4.6, §6.2):
//!   `dstdomain` allowlist, the same `http_access` order, its access log;
//! - mitmproxy: `mitmdump` with an addon that injects the token header (TLS terminated);
//! - egressd: `allow_domains`, and for `intercept` an `[[intercept]]` rule with a static
//!   `env` credential injected as the same header; its audit log on, as in production.

use std::{
    fmt, fs,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{
    netns::{BenchNet, UPSTREAM_ADDR},
    procfs::{self, Measured},
    proto::{Op, Reply, TOKEN_HEADER, TOKEN_VALUE, UPSTREAM_NAME},
};

/// One column of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No proxy: the physical limit.
    Direct,
    /// HAProxy, TCP mode, SNI allowlist.
    Haproxy,
    /// nginx `stream` with `ssl_preread`.
    Nginx,
    /// Squid as AWF configures it (CONNECT, `dstdomain` allowlist).
    Squid,
    /// mitmproxy terminating TLS and injecting a header.
    Mitmproxy,
    /// egressd, allowed name passed through, bytes relayed inside the kernel (sockmap).
    EgressdPass,
    /// egressd, allowed name passed through, bytes relayed with splice(2) (`--relay splice`,
    /// the path of kernels without the in-kernel relay).
    EgressdSplice,
    /// egressd terminating TLS and injecting a static credential.
    EgressdIntercept,
    /// egressd terminating TLS without a credential (strict interception only): the
    /// baseline for the token broker's cached path.
    EgressdStrict,
}

impl Kind {
    /// Every target, in the order they run and are shown.
    pub const ALL: [Kind; 9] = [
        Kind::Direct,
        Kind::Haproxy,
        Kind::Nginx,
        Kind::Squid,
        Kind::Mitmproxy,
        Kind::EgressdPass,
        Kind::EgressdSplice,
        Kind::EgressdIntercept,
        Kind::EgressdStrict,
    ];

    /// Short name, used on the command line (`--only`), in files and in the JSON.
    pub fn id(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
            Kind::Squid => "squid",
            Kind::Mitmproxy => "mitmproxy",
            Kind::EgressdPass => "egressd-pass",
            Kind::EgressdSplice => "egressd-splice",
            Kind::EgressdIntercept => "egressd-intercept",
            Kind::EgressdStrict => "egressd-strict",
        }
    }

    /// What the row shows.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Direct => "no proxy (the physical limit)",
            Kind::Haproxy => "TCP mode, SNI allowlist",
            Kind::Nginx => "stream + ssl_preread",
            Kind::Squid => "CONNECT, AWF's squid.conf",
            Kind::Mitmproxy => "TLS terminated, header injected",
            Kind::EgressdPass => "SNI allowlist, pass-through relayed in the kernel",
            Kind::EgressdSplice => "SNI allowlist, pass-through with splice",
            Kind::EgressdIntercept => "TLS terminated, credential injected",
            Kind::EgressdStrict => "TLS terminated, no credential",
        }
    }

    /// Parses [`Kind::id`].
    pub fn from_id(id: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.id() == id)
    }

    /// The upstream must see the injected header through this target.
    pub fn injects(self) -> bool {
        matches!(self, Kind::Mitmproxy | Kind::EgressdIntercept)
    }

    /// Only the request workloads run (the strict variant exists to compare request latency
    /// with and without a credential).
    pub fn requests_only(self) -> bool {
        matches!(self, Kind::EgressdStrict)
    }

    /// The proxy is egressd itself.
    pub fn is_egressd(self) -> bool {
        matches!(
            self,
            Kind::EgressdPass | Kind::EgressdSplice | Kind::EgressdIntercept | Kind::EgressdStrict
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `egressd` binary (release build).
    pub egressd: PathBuf,
    /// `haproxy`, if installed.
    pub haproxy: Option<PathBuf>,
    /// `nginx` and its stream module, if both are installed.
    pub nginx: Option<(PathBuf, PathBuf)>,
    /// `squid`, if installed.
    pub squid: Option<PathBuf>,
    /// `mitmdump`, if installed.
    pub mitmdump: Option<PathBuf>,
}

impl Tools {
    /// Looks for the peers on `PATH` and in the usual `sbin` folders.
    pub fn find(egressd: PathBuf, mitmdump: Option<PathBuf>) -> Self {
        let module = [
            "/usr/lib/nginx/modules/ngx_stream_module.so",
            "/usr/lib64/nginx/modules/ngx_stream_module.so",
            "/usr/share/nginx/modules/ngx_stream_module.so",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
        Self {
            egressd,
            haproxy: which("haproxy"),
            nginx: which("nginx").zip(module),
            squid: which("squid"),
            mitmdump: mitmdump
                .filter(|p| p.exists())
                .or_else(|| which("mitmdump")),
        }
    }

    /// Why `kind` cannot run here, if it cannot.
    pub fn missing(&self, kind: Kind) -> Option<String> {
        let hint = "(`cargo xtask bench` installs it)";
        match kind {
            Kind::Direct => None,
            Kind::Haproxy if self.haproxy.is_none() => Some(format!("haproxy not found {hint}")),
            Kind::Nginx if self.nginx.is_none() => Some(format!(
                "nginx or its stream module (libnginx-mod-stream) not found {hint}"
            )),
            Kind::Squid if self.squid.is_none() => Some(format!("squid not found {hint}")),
            Kind::Mitmproxy if self.mitmdump.is_none() => {
                Some(format!("mitmdump not found {hint}"))
            }
            k if k.is_egressd() && !self.egressd.exists() => Some(format!(
                "{} not found (cargo build --release -p egressd)",
                self.egressd.display()
            )),
            _ => None,
        }
    }

    /// The version the tool reports, first line.
    pub fn version(&self, kind: Kind) -> Option<String> {
        let (program, arg) = match kind {
            Kind::Direct => return None,
            Kind::Haproxy => (self.haproxy.clone()?, "-v"),
            Kind::Nginx => (self.nginx.clone()?.0, "-v"),
            Kind::Squid => (self.squid.clone()?, "-v"),
            Kind::Mitmproxy => (self.mitmdump.clone()?, "--version"),
            _ => (self.egressd.clone(), "--version"),
        };
        let out = Command::new(program).arg(arg).output().ok()?;
        // nginx prints its version on stderr.
        let text = [out.stdout, out.stderr].concat();
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    }
}

/// Files and programs one run shares between targets.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The namespaces.
    pub net: &'a BenchNet,
    /// World-readable folder with the configurations, the CA and a copy of this binary.
    pub work: &'a Path,
    /// Where the proxies' own logs go.
    pub logs: &'a Path,
    /// The bench binary, readable and executable by the sandbox user.
    pub bench: &'a Path,
    /// The CA the upstream's certificate is signed by.
    pub ca: &'a Path,
    /// The programs.
    pub tools: &'a Tools,
    /// `RLIMIT_NOFILE` of every process started (the peers are configured to stay within).
    pub fd_limit: u64,
}

/// A started target: its proxy (if any), the client that drives it, and what to measure.
pub struct Running {
    proxy: Option<Child>,
    /// The workload client.
    pub driver: Driver,
    /// The proxy's processes, for `/proc` samples (`None` for `direct`).
    pub measured: Option<Measured>,
}

const HAPROXY_PORT: u16 = 8443;
const NGINX_PORT: u16 = 8444;
const SQUID_PORT: u16 = 3128;
const MITM_PORT: u16 = 8080;
/// Environment variable holding the token egressd injects (a static `env` credential).
const TOKEN_VAR: &str = "EGRESSD_BENCH_TOKEN";

/// Starts `kind`'s proxy and its client.
///
/// # Errors
///
/// A configuration could not be written, or a process could not be started.
pub fn start(kind: Kind, setup: &Setup<'_>) -> Result<Running> {
    let log = |name: &str| -> Result<fs::File> {
        let path = setup.logs.join(format!("{}-{name}.log", kind.id()));
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
    };
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (proxy, connect, via_connect, extra_ca) = match kind {
        Kind::Direct => (None, BenchNet::upstream_addr(), false, None),
        Kind::Haproxy => {
            let conf = write_conf(setup.work, "haproxy.cfg", &haproxy_conf(setup.fd_limit))?;
            let haproxy = setup
                .tools
                .haproxy
                .as_ref()
                .ok_or_else(|| anyhow!("no haproxy"))?;
            let child = spawn(
                setup
                    .net
                    .in_client()
                    .arg(haproxy)
                    .arg("-db")
                    .arg("-f")
                    .arg(conf),
                log("proxy")?,
            )?;
            (Some(child), local(HAPROXY_PORT), false, None)
        }
        Kind::Nginx => {
            let (nginx, module) = setup
                .tools
                .nginx
                .as_ref()
                .ok_or_else(|| anyhow!("no nginx"))?;
            let dir = setup.work.join("nginx");
            fs::create_dir_all(&dir)?;
            let conf = write_conf(
                &dir,
                "nginx.conf",
                &nginx_conf(module, &dir, setup.fd_limit),
            )?;
            let child = spawn(
                setup
                    .net
                    .in_client()
                    .arg(nginx)
                    .arg("-p")
                    .arg(&dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(conf),
                log("proxy")?,
            )?;
            (Some(child), local(NGINX_PORT), false, None)
        }
        Kind::Squid => {
            let squid = setup
                .tools
                .squid
                .as_ref()
                .ok_or_else(|| anyhow!("no squid"))?;
            // Squid drops to its own user (`proxy` on Debian): its folder must be writable.
            let dir = setup.work.join("squid");
            fs::create_dir_all(&dir)?;
            set_mode(&dir, 0o777)?;
            let conf = write_conf(setup.work, "squid.conf", &squid_conf(&dir, setup.fd_limit))?;
            let child = spawn(
                setup
                    .net
                    .in_client()
                    .arg(squid)
                    .arg("-N")
                    .arg("-f")
                    .arg(conf),
                log("proxy")?,
            )?;
            (Some(child), local(SQUID_PORT), true, None)
        }
        Kind::Mitmproxy => {
            let mitmdump = setup
                .tools
                .mitmdump
                .as_ref()
                .ok_or_else(|| anyhow!("no mitmdump"))?;
            let confdir = setup.work.join("mitmproxy");
            fs::create_dir_all(&confdir)?;
            let addon = write_conf(setup.work, "inject.py", &mitm_addon())?;
            let child = spawn(
                setup
                    .net
                    .in_client()
                    .arg(mitmdump)
                    .args(["--listen-host", "127.0.0.1", "--listen-port"])
                    .arg(MITM_PORT.to_string())
                    .arg("--set")
                    .arg(format!("confdir={}", confdir.display()))
                    .arg("--set")
                    .arg(format!(
                        "ssl_verify_upstream_trusted_ca={}",
                        setup.ca.display()
                    ))
                    .args(["--set", "stream_large_bodies=1m", "-q", "-s"])
                    .arg(addon),
                log("proxy")?,
            )?;
            // mitmproxy writes its CA on first start; the client must trust it.
            let ca = confdir.join("mitmproxy-ca-cert.pem");
            wait_for_file(&ca, Duration::from_secs(30))?;
            (Some(child), local(MITM_PORT), true, Some(ca))
        }
        Kind::EgressdPass | Kind::EgressdSplice | Kind::EgressdIntercept | Kind::EgressdStrict => {
            let conf = write_conf(
                setup.work,
                &format!("{}.toml", kind.id()),
                &egressd_conf(
                    kind,
                    setup.ca,
                    &setup.logs.join(format!("{}-audit.jsonl", kind.id())),
                ),
            )?;
            let mut cmd = setup.net.in_client();
            cmd.arg(&setup.tools.egressd)
                .args(["exec", "--no-github", "--user", "65534:65534", "-c"])
                .arg(conf)
                .arg("--relay")
                .arg(match kind {
                    // The fast path or nothing: a silent fallback would mislabel the row.
                    Kind::EgressdPass => "kernel",
                    Kind::EgressdSplice => "splice",
                    _ => "auto",
                })
                .arg("--")
                .arg(setup.bench)
                .arg("client")
                .arg("--connect")
                .arg(BenchNet::upstream_addr().to_string())
                .arg("--ca")
                .arg(setup.ca)
                .env(TOKEN_VAR, TOKEN_VALUE);
            let child = spawn_piped(&mut cmd, log("egressd")?)?;
            let pid = pid_of(&child);
            return Ok(Running {
                proxy: None,
                driver: Driver::new(child),
                measured: Some(Measured { pid, tree: false }),
            });
        }
    };
    let measured = proxy.as_ref().map(|p| Measured {
        pid: pid_of(p),
        tree: true,
    });
    let mut cmd = setup.net.in_client();
    // The peers' clients trust only the bench CA (and mitmproxy's); egressd's sandbox sets
    // its own SSL_CERT_FILE.
    cmd.env_remove("SSL_CERT_FILE")
        .arg(setup.bench)
        .arg("client")
        .arg("--connect")
        .arg(connect.to_string())
        .arg("--ca")
        .arg(setup.ca);
    if let Some(ca) = extra_ca {
        cmd.arg("--ca").arg(ca);
    }
    if via_connect {
        cmd.arg("--via-connect");
    }
    let client = match spawn_piped(&mut cmd, log("client")?) {
        Ok(c) => c,
        Err(e) => {
            if let Some(mut p) = proxy {
                terminate(&mut p, true);
            }
            return Err(e);
        }
    };
    Ok(Running {
        proxy,
        driver: Driver::new(client),
        measured,
    })
}

impl Running {
    /// Asks the client to quit, then stops the proxy (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(mut self) {
        let _ = self.driver.call(&Op::Quit, Duration::from_secs(10));
        drop(self.driver.stdin.take());
        if !wait_exit(&mut self.driver.child, Duration::from_secs(20)) {
            terminate(&mut self.driver.child, false);
        }
        if let Some(mut proxy) = self.proxy.take() {
            terminate(&mut proxy, true);
        }
    }
}

/// The pipe to one client process ([`crate::proto`]).
pub struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Driver {
    fn new(mut child: Child) -> Self {
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = stdout {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// Sends `op` and waits up to `limit` for its reply.
    ///
    /// # Errors
    ///
    /// The client is gone or did not answer in time.
    pub fn call(&mut self, op: &Op, limit: Duration) -> Result<Reply> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("client stdin closed"))?;
        let mut line = serde_json::to_string(op)?;
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .context("the client is gone (see its log)")?;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                // Anything else on stdout (egressd prints nothing there, but be lenient) is
                // skipped.
                Ok(line) => {
                    if let Ok(reply) = serde_json::from_str::<Reply>(&line) {
                        return Ok(reply);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!("no answer to {op:?} within {limit:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("the client exited during {op:?} (see its log)")
                }
            }
        }
    }
}

/// HAProxy refuses to start when `maxconn` needs more descriptors than it may have: two
/// per connection plus a margin for listeners and internals.
fn haproxy_conf(fd_limit: u64) -> String {
    let maxconn = fd_limit.saturating_sub(400) / 2;
    format!(
        "global
    maxconn {maxconn}

defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 10s
    timeout client 10m
    timeout server 10m

frontend tls_in
    bind 127.0.0.1:{HAPROXY_PORT}
    tcp-request inspect-delay 10s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend upstream if {{ req_ssl_sni -i {UPSTREAM_NAME} }}

backend upstream
    server up {UPSTREAM_ADDR}:443
"
    )
}

fn nginx_conf(module: &Path, dir: &Path, fd_limit: u64) -> String {
    let worker_connections = fd_limit.saturating_sub(100);
    format!(
        "load_module {module};
daemon off;
worker_processes auto;
worker_rlimit_nofile {fd_limit};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections {worker_connections};
}}

stream {{
    map $ssl_preread_server_name $allowed_upstream {{
        {UPSTREAM_NAME} {UPSTREAM_ADDR}:443;
        default 127.0.0.1:9;
    }}
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        ssl_preread on;
        proxy_pass $allowed_upstream;
        proxy_connect_timeout 10s;
        proxy_timeout 10m;
    }}
}}
",
        module = module.display(),
        dir = dir.display(),
    )
}

/// AWF's generated `squid.conf`, reduced to what applies to one plain allowlist entry
/// (`shared/reference/awf.md` §3.1 row 1, §3.2 order, §4.6 settings, §6.2 log format).
fn squid_conf(dir: &Path, fd_limit: u64) -> String {
    let dir = dir.display();
    format!(
        r#"http_port 127.0.0.1:{SQUID_PORT}
acl localnet src 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7 fe80::/10
acl Safe_ports port 80
acl Safe_ports port 443
acl CONNECT method CONNECT
acl allowed_domains dstdomain .{UPSTREAM_NAME}
acl dst_ipv4 dstdom_regex ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$
acl dst_ipv6 dstdom_regex ^\[?[0-9a-fA-F:]+\]?$
http_access deny !Safe_ports
http_access deny CONNECT !Safe_ports
http_access deny dst_ipv4
http_access deny dst_ipv6
http_access deny !allowed_domains
http_access allow localnet
http_access allow localhost
http_access deny all

cache deny all
forwarded_for delete
via off
pinger_enable off
read_timeout 30 minutes
connect_timeout 30 seconds
request_timeout 2 minutes
persistent_request_timeout 2 minutes
pconn_timeout 2 minutes
client_lifetime 8 hours
half_closed_clients on
shutdown_lifetime 0 seconds

logformat firewall_detailed %ts.%03tu %>a:%>p %{{Host}}>h %<a:%<p %rv %rm %>Hs %Ss:%Sh %ru "%{{User-Agent}}>h"
access_log {dir}/access.log firewall_detailed
cache_log {dir}/cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
max_filedescriptors {fd_limit}
dns_nameservers 127.0.0.1
hosts_file /etc/hosts
"#
    )
}

fn mitm_addon() -> String {
    format!(
        "# Injects the credential, as an API-key sidecar would.
class InjectToken:
    def request(self, flow):
        flow.request.headers[{TOKEN_HEADER:?}] = {TOKEN_VALUE:?}


addons = [InjectToken()]
"
    )
}

fn egressd_conf(kind: Kind, ca: &Path, audit: &Path) -> String {
    let mut conf = format!(
        r#"allow_domains = ["{UPSTREAM_NAME}"]
resolve = ["{UPSTREAM_NAME}:{UPSTREAM_ADDR}"]
upstream_ca = "{ca}"
audit_log = "{audit}"

[timeouts]
request_head = "10m"
idle = "10m"

[limits]
max_connections = 30000
"#,
        ca = ca.display(),
        audit = audit.display(),
    );
    match kind {
        Kind::EgressdIntercept => conf.push_str(&format!(
            r#"
[[credential]]
name = "bench-token"
source = "env"
var = "{TOKEN_VAR}"

[[intercept]]
host = "{UPSTREAM_NAME}"
credential = "bench-token"
header = "{TOKEN_HEADER}"
format = "{{token}}"
"#
        )),
        Kind::EgressdStrict => conf.push_str(&format!(
            r#"
[[intercept]]
host = "{UPSTREAM_NAME}"
"#
        )),
        _ => {}
    }
    conf
}

fn write_conf(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(&path, 0o644)?;
    Ok(path)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn spawn(cmd: &mut Command, log: fs::File) -> Result<Child> {
    let err = log.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

fn spawn_piped(cmd: &mut Command, log: fs::File) -> Result<Child> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pids fit in i32 (pid_max is at most 2^22)")
}

fn wait_for_file(path: &Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {limit:?}", path.display());
        }
        thread::sleep(Duration::from_millis(100));
    }
    // Written in one go by mitmproxy, but give it a moment to finish.
    thread::sleep(Duration::from_millis(200));
    Ok(())
}

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// SIGTERM to the process we started, then SIGKILL to it (and, with `tree`, to the
/// descendants it had) if it has not exited after 10 s.
fn terminate(child: &mut Child, tree: bool) {
    let pid = pid_of(child);
    let family = if tree {
        procfs::descendants(pid)
    } else {
        vec![pid]
    };
    // SAFETY: kill(2) with a pid we started (and its children), no memory involved.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if wait_exit(child, Duration::from_secs(10)) {
        return;
    }
    for p in family {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    let _ = child.wait();
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
