//! `source = "per-actor"`: the triggering user's own secret, selected by the verified
//! `actor_id` of the run's provenance (`token/provenance.rs`).
//!
//! The table is a TOML file only its owner can read or write (mode `0600` or stricter, like
//! `file` secrets), read once when the broker is built. Each key is a numeric `actor_id` (the
//! signed claim, never the login, which users can change); each value names where that
//! user's secret is:
//!
//! ```toml
//! # /etc/egressd/actors.toml
//! 583231 = { env = "COPILOT_TOKEN_OCTOCAT" }     # a variable of egressd's own environment
//! 1024025 = { file = "tokens/hubot" }            # a root-only file (relative to this table)
//! 9919 = { credential = "copilot-team-a" }       # another [[credential]] of the config
//! ```
//!
//! The selection happens once, when the broker is built: the run has one triggering user.
//! Only the selected entry's secret is read, so another user's missing variable does not stop
//! this run. A run whose user has no entry, or that has no verified provenance at all, gets a
//! `Forbidden` error for every request (the interception answers `403` naming the user);
//! nothing else (headers, the environment, unverified claims) can select an entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use egressd_config::{Credential, CredentialSource};
use serde::Deserialize;

use crate::provenance::Provenance;

/// Where the selected user's secret is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Another credential of the configuration.
    Credential(String),
    /// A variable of the daemon's environment.
    Env(String),
    /// A root-only file.
    File(PathBuf),
}

/// A loaded table: `actor_id` to [`Entry`].
#[derive(Debug, Clone)]
pub(crate) struct ActorTable {
    entries: BTreeMap<String, Entry>,
}

/// What a per-actor credential resolves to for this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selection {
    /// The user's entry.
    Entry(Entry),
    /// No usable entry: the message for the `403`, safe to show the agent.
    Forbidden(String),
}

impl ActorTable {
    /// Reads and parses the table at `path`.
    ///
    /// # Errors
    ///
    /// A text naming the file and the fix: missing, not a regular file, accessible to group or
    /// others, not valid TOML, a key that is not a numeric ID, an entry without exactly one of
    /// `env`, `file`, `credential`.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read the actor table {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("the actor table {shown} is not a regular file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the actor table {shown} is accessible to group or others (mode {mode:o}): \
                 run `chmod 600 {shown}`; whoever can write it decides whose secret a run gets"
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the actor table {shown}: {e}"))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new("/")))
            .map_err(|why| format!("the actor table {shown}: {why}"))
    }

    /// Parses a table's text; `dir` resolves relative `file` paths.
    fn parse(text: &str, dir: &Path) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            env: Option<String>,
            file: Option<PathBuf>,
            credential: Option<String>,
        }
        let raw: BTreeMap<String, Raw> = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut entries = BTreeMap::new();
        for (id, raw) in raw {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "key {id:?} is not a numeric actor_id: key entries by the user's ID (the \
                     `actor_id` claim; `gh api users/LOGIN --jq .id`), never by login"
                ));
            }
            let entry = match (raw.env, raw.file, raw.credential) {
                (Some(var), None, None) => Entry::Env(var),
                (None, Some(file), None) => Entry::File(dir.join(file)),
                (None, None, Some(name)) => Entry::Credential(name),
                _ => {
                    return Err(format!(
                        "actor {id}: give exactly one of `env`, `file` or `credential`"
                    ));
                }
            };
            entries.insert(id, entry);
        }
        Ok(Self { entries })
    }

    /// The entry of the user in `provenance`, or why there is none.
    pub(crate) fn select(&self, provenance: Option<&Provenance>) -> Selection {
        let Some(p) = provenance else {
            return Selection::Forbidden(
                "the triggering user is unknown: this run has no verified GitHub OIDC \
                 provenance (the job needs `permissions: id-token: write`; egressd said why at \
                 start), so no per-user credential can be chosen"
                    .to_owned(),
            );
        };
        match self.entries.get(&p.actor_id) {
            Some(entry) => Selection::Entry(entry.clone()),
            None => Selection::Forbidden(format!(
                "no credential for actor {} (id {}): the per-user table has no entry for this \
                 user; ask the platform's operators to add one",
                p.actor, p.actor_id
            )),
        }
    }

    /// Every credential name the table refers to.
    pub(crate) fn credentials(&self) -> impl Iterator<Item = &str> {
        self.entries.values().filter_map(|e| match e {
            Entry::Credential(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

/// The daemon variables the `per-actor` tables of `credentials` name (for every user), so the
/// daemon can hand them to the broker and keep them from the sandbox. Unreadable tables are
/// skipped here; building the broker reports them.
pub fn table_vars(credentials: &[Credential]) -> Vec<String> {
    credentials
        .iter()
        .filter_map(|c| match &c.source {
            CredentialSource::PerActor { table } => ActorTable::load(table).ok(),
            _ => None,
        })
        .flat_map(|t| {
            t.entries
                .into_values()
                .filter_map(|e| match e {
                    Entry::Env(var) => Some(var),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_keyed_by_numeric_id_and_name_one_place() {
        let table = ActorTable::parse(
            "583231 = { env = \"TOKEN_OCTOCAT\" }\n\"12\" = { file = \"tokens/hubot\" }\n\
             99 = { credential = \"team-a\" }\n",
            Path::new("/etc/egressd"),
        )
        .unwrap();
        let octocat = Provenance::for_tests("octocat", "583231");
        assert_eq!(
            table.select(Some(&octocat)),
            Selection::Entry(Entry::Env("TOKEN_OCTOCAT".into()))
        );
        let hubot = Provenance::for_tests("hubot", "12");
        assert_eq!(
            table.select(Some(&hubot)),
            Selection::Entry(Entry::File("/etc/egressd/tokens/hubot".into()))
        );
        assert_eq!(table.credentials().collect::<Vec<_>>(), ["team-a"]);

        let Selection::Forbidden(why) = table.select(Some(&Provenance::for_tests("mallory", "7")))
        else {
            panic!("an unknown actor must be refused")
        };
        assert!(why.contains("actor mallory (id 7)"), "{why}");
        let Selection::Forbidden(why) = table.select(None) else {
            panic!("no provenance must be refused")
        };
        assert!(why.contains("triggering user is unknown"), "{why}");
    }

    #[test]
    fn logins_as_keys_and_ambiguous_entries_are_refused() {
        let dir = Path::new("/");
        let err = ActorTable::parse("octocat = { env = \"X\" }", dir).unwrap_err();
        assert!(err.contains("not a numeric actor_id"), "{err}");
        let err = ActorTable::parse("1 = { env = \"X\", file = \"y\" }", dir).unwrap_err();
        assert!(err.contains("exactly one"), "{err}");
        assert!(ActorTable::parse("1 = { login = \"x\" }", dir).is_err());
        assert!(ActorTable::parse("1 = {}", dir).is_err());
    }

    #[test]
    fn the_table_must_be_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("egressd-actors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("actors.toml");
        std::fs::write(&path, "1 = { env = \"A\" }\n2 = { file = \"b\" }\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ActorTable::load(&path).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ActorTable::load(&path).is_ok());
        let credentials = vec![Credential {
            name: "mine".into(),
            source: CredentialSource::PerActor {
                table: path.clone(),
            },
            refresh_margin: None,
        }];
        assert_eq!(table_vars(&credentials), ["A"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
