//! Static secrets held by the daemon: `source = "env"` and `source = "file"`.
//!
//! `env`: the daemon reads its own environment and hands the values in
//! (`SourceEnv::vars`); this crate never reads the environment. `file`: read once when the
//! broker is built, and refused unless only its owner can read or write it (mode `0600` or
//! stricter) and it is a regular file. Surrounding whitespace (a trailing newline) is trimmed;
//! an empty secret is an error. Neither is re-read while the daemon runs.

use std::path::Path;

use crate::token::secret::Secret;

/// A secret that never changes.
pub(crate) struct Static {
    secret: Secret,
    label: &'static str,
}

impl Static {
    /// The value of variable `var` among `vars`.
    ///
    /// # Errors
    ///
    /// The variable is missing or empty.
    pub(crate) fn env(
        var: &str,
        vars: &std::collections::HashMap<String, Secret>,
    ) -> Result<Self, String> {
        let value = vars.get(var).ok_or_else(|| {
            format!("the daemon's environment has no variable {var}: set it for egressd")
        })?;
        Ok(Self {
            secret: trimmed(value.expose()).ok_or_else(|| format!("variable {var} is empty"))?,
            label: "env",
        })
    }

    /// The content of `path`.
    ///
    /// # Errors
    ///
    /// The file is missing, unreadable, not a regular file, readable or writable by group or
    /// others, or empty.
    pub(crate) fn file(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{shown} is not a regular file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{shown} is accessible to group or others (mode {mode:o}): run \
                 `chmod 600 {shown}` so that only its owner can read it"
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        Ok(Self {
            secret: trimmed(&text).ok_or_else(|| format!("{shown} is empty"))?,
            label: "file",
        })
    }

    pub(crate) fn secret(&self) -> &Secret {
        &self.secret
    }

    pub(crate) fn label(&self) -> &'static str {
        self.label
    }
}

fn trimmed(text: &str) -> Option<Secret> {
    let text = text.trim();
    (!text.is_empty()).then(|| Secret::new(text))
}
