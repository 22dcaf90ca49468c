//! [`Scene`]: the standard set-up most e2e tests share.
//!
//! One [`UpstreamNet`] holding two upstreams, each on HTTPS (443) and plain HTTP (80):
//! [`API`] on `10.200.X.2` and [`EVIL`] on `10.200.X.3`, with certificates from one [`TestCa`]
//! whose PEM sits in a world-readable [`Scratch`] directory with a copy of `egressd-probe`.
//! [`Scene::egressd`] returns an [`EgressdCommand`] that already resolves both names to their
//! upstreams and writes an audit log, so a test adds only its policy and its command.

use std::path::PathBuf;

use crate::{EgressdCommand, HttpUpstream, HttpsUpstream, Scratch, TestCa, UpstreamNet};

/// The allowed name in most tests.
pub const API: &str = "api.allowed.example";
/// The name that is never allowed in most tests.
pub const EVIL: &str = "evil.example";

/// Two upstreams in their own namespace, a CA, a scratch directory. Field order is drop
/// order: servers stop before the namespace goes.
pub struct Scene {
    /// HTTPS upstream for [`API`] on `net.addr():443`.
    pub api: HttpsUpstream,
    /// HTTPS upstream for [`EVIL`] on `net.addr2():443`.
    pub evil: HttpsUpstream,
    /// Plain HTTP upstream for [`API`] on `net.addr():80`.
    pub api_http: HttpUpstream,
    /// Plain HTTP upstream for [`EVIL`] on `net.addr2():80`.
    pub evil_http: HttpUpstream,
    /// The CA, for more leaves.
    pub ca: TestCa,
    /// `ca.pem` in the scratch directory (pass to curl's `--cacert`).
    pub ca_pem: PathBuf,
    /// `egressd-probe`, executable by the sandbox user.
    pub probe: PathBuf,
    /// The audit log [`Scene::egressd`] points egressd at.
    pub audit_log: PathBuf,
    /// The scratch directory.
    pub scratch: Scratch,
    /// The upstreams' namespace.
    pub net: UpstreamNet,
}

impl Scene {
    /// Build the scene (root only: call `privileged()` first).
    pub fn new() -> Self {
        let net = UpstreamNet::new();
        let ca = TestCa::new();
        let scratch = Scratch::new();
        let ca_pem = ca.write_ca_pem(scratch.dir());
        let probe = scratch.install_probe();
        let audit_log = scratch.path("audit.jsonl");
        Self {
            api: HttpsUpstream::start(&net, net.addr(), &[API], &ca),
            evil: HttpsUpstream::start(&net, net.addr2(), &[EVIL], &ca),
            api_http: HttpUpstream::start(&net, net.addr(), API),
            evil_http: HttpUpstream::start(&net, net.addr2(), EVIL),
            ca,
            ca_pem,
            probe,
            audit_log,
            scratch,
            net,
        }
    }

    /// `egressd exec --resolve API:10.200.X.2 --resolve EVIL:10.200.X.3 --audit-log ...`,
    /// to be completed with a policy and a command.
    pub fn egressd(&self) -> EgressdCommand {
        EgressdCommand::new()
            .resolve(API, self.net.addr())
            .resolve(EVIL, self.net.addr2())
            .audit_log(&self.audit_log)
    }

    /// `curl -sS` with short timeouts, this scene's CA, and `--resolve NAME:443:FAKE_IP` so the
    /// client dials a TEST-NET address that exists only inside the sandbox; then the URL.
    pub fn curl_https(&self, name: &str, fake_ip: &str) -> Vec<String> {
        let mut argv = curl_base();
        argv.extend([
            "--cacert".to_owned(),
            self.ca_pem.display().to_string(),
            "--resolve".to_owned(),
            format!("{name}:443:{fake_ip}"),
            format!("https://{name}/"),
        ]);
        argv
    }

    /// `curl -sS` of `http://NAME/` with `--resolve NAME:80:FAKE_IP`, printing the body and then
    /// ` HTTP <code>` on the same line.
    pub fn curl_http(&self, name: &str, fake_ip: &str) -> Vec<String> {
        let mut argv = curl_base();
        argv.extend([
            "-w".to_owned(),
            " HTTP %{http_code}".to_owned(),
            "--resolve".to_owned(),
            format!("{name}:80:{fake_ip}"),
            format!("http://{name}/"),
        ]);
        argv
    }
}

impl Default for Scene {
    fn default() -> Self {
        Self::new()
    }
}

/// `curl -sS --connect-timeout 10 --max-time 20`.
pub fn curl_base() -> Vec<String> {
    ["curl", "-sS", "--connect-timeout", "10", "--max-time", "20"]
        .map(str::to_owned)
        .to_vec()
}

/// Quote `argv` for `sh -c` (single quotes).
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}
