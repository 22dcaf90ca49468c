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
const RUN_DIR: &str = "/run/egressd";

/// Variables that point TLS clients at a CA bundle: OpenSSL and most C/Rust/Go tools, Node,
/// Python requests, curl, git.
const BUNDLE_VARS: [&str; 5] = [
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// The bundle file; removed (with its directory) on drop.
pub struct TrustBundle {
    dir: PathBuf,
    file: PathBuf,
}

impl TrustBundle {
    /// Writes `pem` to `/run/egressd/<sandbox>/ca-bundle.pem`, world-readable.
    pub fn write(sandbox: &str, pem: &str) -> anyhow::Result<Self> {
        let dir = PathBuf::from(RUN_DIR).join(sandbox);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("ca-bundle.pem");
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&file)
            .with_context(|| format!("creating {}", file.display()))?;
        std::io::Write::write_all(&mut out, pem.as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(Self { dir, file })
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
        let _ = fs::remove_dir(&self.dir);
    }
}
