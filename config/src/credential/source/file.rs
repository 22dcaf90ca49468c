//! `source = "file"`: a static secret in a file only its owner can read (checked by the
//! daemon when it starts; read by the proxy).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::credential::CredentialSource;
use crate::credential::check::Checker;

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    /// The file (relative paths resolved against the config file's directory).
    path: Option<Spanned<PathBuf>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "file";

    fn into_source(self, check: &mut Checker<'_>, dir: &Path) -> CredentialSource {
        if self.path.is_none() {
            check.fail(check.at_table, "source 'file' needs `path`".to_owned());
        }
        CredentialSource::File {
            path: self
                .path
                .as_ref()
                .map_or_else(PathBuf::new, |p| dir.join(p.get_ref())),
        }
    }
}
