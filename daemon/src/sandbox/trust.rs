//! The trust bundle the sandbox gets when egressd intercepts TLS: the system roots plus the
//! run's CA, in a file the sandboxed user can read, named by the variables TLS stacks honour.
//!
//! The bundle holds certificates only (no key): see `egressd_proxy::intercept`. It lives in
//! `/run/egressd/<sandbox>/` and is removed when the sandbox ends.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::PathBuf,
};

use anyhow::Context as _;

/// Where the per-sandbox directories live.
pub const RUN_DIR: &str = "/run/egressd";
/// The CA certificate's file name in a sandbox's directory.
pub const CA_FILE: &str = "ca.pem";

/// Variables that point TLS clients at a CA bundle: OpenSSL and most C/Rust/Go tools (and
/// the HTTP stacks under the OpenAI and Anthropic Python SDKs), Node, Python requests and
/// pip, curl, git, botocore (boto3, the AWS CLI), cargo.
const BUNDLE_VARS: [&str; 7] = [
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "CARGO_HTTP_CAINFO",
];

/// The bundle file and the CA certificate alone; removed (with their directory) on drop.
pub struct TrustBundle {
    dir: PathBuf,
    file: PathBuf,
    ca: PathBuf,
}

impl TrustBundle {
    /// Writes `pem` (system roots + CA) to `/run/egressd/<sandbox>/ca-bundle.pem` and the CA
    /// certificate alone to `ca.pem` (for `egressd ca export`), both world-readable.
    pub fn write(sandbox: &str, pem: &str, ca_pem: &str) -> anyhow::Result<Self> {
        let dir = PathBuf::from(RUN_DIR).join(sandbox);
        // One left by an egressd that was killed: the name holds this process's id (or is the
        // daemon's own), so no live egressd owns it, and the bundle is made afresh below.
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the stale {}", dir.display()));
            }
            _ => {}
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("ca-bundle.pem");
        let ca = dir.join(CA_FILE);
        let bundle = Self { dir, file, ca };
        write_public(&bundle.file, pem)?;
        write_public(&bundle.ca, ca_pem)?;
        Ok(bundle)
    }

    /// The bundle file (system roots + the CA).
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// The variables to set in the sandbox, each naming the bundle.
    pub fn env(&self) -> Vec<(String, String)> {
        BUNDLE_VARS
            .iter()
            .map(|v| ((*v).to_owned(), self.file.display().to_string()))
            .collect()
    }
}

impl Drop for TrustBundle {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
        let _ = fs::remove_file(&self.ca);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Creates `path` (which must not exist) world-readable with `text`.
fn write_public(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut out, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The CA certificates of the sandboxes running now, as (sandbox name, PEM path).
pub fn running_cas() -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(RUN_DIR) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let ca = e.path().join(CA_FILE);
            ca.is_file()
                .then(|| (e.file_name().to_string_lossy().into_owned(), ca))
        })
        .collect();
    found.sort();
    found
}
