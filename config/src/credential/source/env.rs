//! `source = "env"`: a static secret from a variable of the daemon's own environment
//! (never passed to the sandbox).

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::credential::CredentialSource;
use crate::credential::check::{Checker, check_var};

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    /// The variable holding the secret.
    var: Option<Spanned<String>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "env";

    fn into_source(self, check: &mut Checker<'_>, _dir: &Path) -> CredentialSource {
        CredentialSource::Env {
            var: check.required(Self::NAME, "var", self.var.as_ref(), check_var),
        }
    }
}
