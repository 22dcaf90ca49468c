//! `source = "per-actor"`: the triggering user's own secret, chosen by the verified
//! `actor_id` of the run's provenance from a root-only table (its format is the proxy's,
//! `token/source/per_actor.rs`).

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
    /// The table mapping `actor_id` to each user's secret.
    table: Option<Spanned<PathBuf>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "per-actor";

    fn into_source(self, check: &mut Checker<'_>, dir: &Path) -> CredentialSource {
        if self.table.is_none() {
            check.fail(
                check.at_table,
                "source 'per-actor' needs `table`".to_owned(),
            );
        }
        CredentialSource::PerActor {
            table: self
                .table
                .as_ref()
                .map_or_else(PathBuf::new, |p| dir.join(p.get_ref())),
        }
    }
}
