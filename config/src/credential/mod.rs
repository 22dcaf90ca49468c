//! Credentials: where the proxy's token broker gets the tokens it injects.
//!
//! This module owns the `[[credential]]` tables of the TOML file and their validated form
//! ([`Credential`]). Each table is read in two steps: `name`, `source` and `refresh_margin`
//! first, then the rest as the table of its source (`source/`, one file per source, unknown
//! keys refused), so a typo never silently changes which token is minted. Once every table
//! has been read, [`check_references`] checks the references between them (unique names,
//! `assertion` names an existing credential, no loops). Nothing here reads an environment
//! variable or a secret file: `env` and `file` only *name* the secret.
//!
//! The format, with every key of every source, is in README.md ("Every credential source").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use crate::error::{Error, ErrorKind, Location};

pub(crate) mod check;
pub(crate) mod source;

use self::check::{Checker, check_name};
pub use self::source::anthropic_wif::{ANTHROPIC_TOKEN_URL, AnthropicWifSource};
pub use self::source::aws_web_identity::{
    AWS_DURATION, AWS_DURATION_MAX, AWS_DURATION_MIN, AWS_STS_URL, AwsWebIdentitySource,
};
pub use self::source::copilot::CopilotSource;
pub use self::source::entra::EntraSource;
pub use self::source::entra_agent::EntraAgentSource;
pub use self::source::spiffe_x509::{SPIFFE_ENDPOINT_SOCKET, SpiffeX509Source};
pub use self::source::token_exchange::{
    GOOGLE_CLOUD_PLATFORM_SCOPE, GOOGLE_IAM_CREDENTIALS_URL, GOOGLE_IMPERSONATION_LIFETIME,
    GOOGLE_STS_URL, Impersonation, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, TokenExchangeSource,
};

/// A validated credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Unique among the credentials; letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// Where its token comes from.
    pub source: CredentialSource,
    /// Refresh this long before expiry; `None` for the broker's default policy.
    pub refresh_margin: Option<Duration>,
}

/// Where a credential's token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSource {
    /// Anthropic workload identity federation (`source = "anthropic-wif"`).
    AnthropicWif(AnthropicWifSource),
    /// AWS STS `AssumeRoleWithWebIdentity` (`source = "aws-web-identity"`).
    AwsWebIdentity(AwsWebIdentitySource),
    /// GitHub Copilot over another credential's GitHub token (`source = "copilot"`, see
    /// [`crate::copilot`]).
    Copilot(CopilotSource),
    /// Entra client credentials with a client assertion (`source = "entra"`).
    Entra(EntraSource),
    /// Entra Agent ID, two hops (`source = "entra-agent"`).
    EntraAgent(EntraAgentSource),
    /// A variable of the daemon's own environment (`source = "env"`).
    Env {
        /// The variable's name.
        var: String,
    },
    /// A file only its owner can read (`source = "file"`).
    File {
        /// The file (relative paths resolved against the config file's directory).
        path: PathBuf,
    },
    /// A GitHub Actions OIDC token (`source = "github-oidc"`).
    GithubOidc {
        /// The requested `aud`; `None` lets GitHub pick the owner's URL.
        audience: Option<String>,
    },
    /// The triggering user's own secret, chosen by the verified `actor_id` of the run's
    /// provenance from a root-only table (`source = "per-actor"`).
    PerActor {
        /// The table (relative paths resolved against the config file's directory).
        table: PathBuf,
    },
    /// An X.509-SVID from the SPIFFE Workload API (`source = "spiffe-x509"`): a client
    /// certificate for mTLS, not a token.
    SpiffeX509(SpiffeX509Source),
    /// An RFC 8693 token exchange, Google STS by default (`source = "oauth2-token-exchange"`).
    TokenExchange(TokenExchangeSource),
}

impl Credential {
    /// The credential whose token this one presents (client assertion, subject token or web
    /// identity token), if any.
    pub fn assertion(&self) -> Option<&str> {
        self.assertion_key().map(|(_, name)| name)
    }

    /// The key naming the credential this one presents, and its value.
    fn assertion_key(&self) -> Option<(&'static str, &str)> {
        match &self.source {
            CredentialSource::AnthropicWif(a) => Some(("assertion", &a.assertion)),
            CredentialSource::AwsWebIdentity(a) => {
                Some(("web_identity_token", &a.web_identity_token))
            }
            CredentialSource::Copilot(c) => Some(("github_token", &c.github_token)),
            CredentialSource::Entra(e) => Some(("assertion", &e.assertion)),
            CredentialSource::EntraAgent(e) => Some(("assertion", &e.assertion)),
            CredentialSource::TokenExchange(t) => Some(("subject_token", &t.subject_token)),
            _ => None,
        }
    }

    /// The `source` keyword, such as `"entra"`.
    pub fn source_name(&self) -> &'static str {
        match &self.source {
            CredentialSource::AnthropicWif(_) => "anthropic-wif",
            CredentialSource::AwsWebIdentity(_) => "aws-web-identity",
            CredentialSource::Copilot(_) => "copilot",
            CredentialSource::Entra(_) => "entra",
            CredentialSource::EntraAgent(_) => "entra-agent",
            CredentialSource::Env { .. } => "env",
            CredentialSource::File { .. } => "file",
            CredentialSource::GithubOidc { .. } => "github-oidc",
            CredentialSource::PerActor { .. } => "per-actor",
            CredentialSource::SpiffeX509(_) => "spiffe-x509",
            CredentialSource::TokenExchange(_) => "oauth2-token-exchange",
        }
    }

    /// Whether this credential is an X.509 identity (`spiffe-x509`), which rules present as
    /// their client certificate (`spiffe = ...`) rather than inject as a token.
    pub fn is_x509_identity(&self) -> bool {
        matches!(self.source, CredentialSource::SpiffeX509(_))
    }
}

/// The `[[credential]]` tables of a file's `text`, each with spans into it (the file has
/// already parsed, so a syntax error here cannot happen; it yields no tables).
pub(crate) fn tables(text: &str) -> Vec<Spanned<DeValue<'_>>> {
    let Ok(mut doc) = toml::de::DeTable::parse(text) else {
        return Vec::new();
    };
    match doc.get_mut().remove("credential").map(Spanned::into_inner) {
        Some(DeValue::Array(tables)) => tables.into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Validates one table. `dir` resolves relative paths; `place` turns a byte offset of the
/// file into a location. Returns the credential and the location of its name.
pub(crate) fn parse(
    table: Spanned<DeValue<'_>>,
    dir: &Path,
    place: &dyn Fn(usize) -> Location,
) -> Result<(Credential, Location), Vec<Error>> {
    let table_at = table.span().start;
    let DeValue::Table(mut keys) = table.into_inner() else {
        let why = "a [[credential]] entry must be a table";
        return Err(parser_error(place, table_at, why.to_owned()));
    };
    let head = Head::take(&mut keys, table_at, place)?;
    let mut check = Checker {
        name: head.name.get_ref(),
        at_table: head.name.span().start,
        place,
        errors: Vec::new(),
    };
    if let Err(why) = check_name(check.name) {
        check.fail(head.name.span().start, why);
    }
    let sources = source::all();
    let source = head.source.get_ref().as_str();
    let Some(reader) = sources.iter().find(|r| r.name == source) else {
        let names: Vec<&str> = sources.iter().map(|r| r.name).collect();
        check.fail(
            head.source.span().start,
            format!("unknown source '{source}': use one of {}", names.join(", ")),
        );
        return Err(check.errors);
    };
    let unknown = take_foreign_keys(&mut keys, reader, &sources, &mut check);
    if !unknown.is_empty() {
        return Err(unknown);
    }
    if let (Some(margin), "spiffe-x509") = (&head.refresh_margin, source) {
        check.fail(
            margin.span().start,
            "`refresh_margin` does not apply to source 'spiffe-x509': the Workload API \
             pushes rotated SVIDs itself; remove it"
                .to_owned(),
        );
    }
    let rest = Spanned::new(table_at..table_at, DeValue::Table(keys));
    let source = (reader.read)(rest, &mut check, dir).map_err(|e| {
        let at = e.span().map_or(table_at, |s| s.start);
        parser_error(
            place,
            at,
            e.message().trim().trim_end_matches('.').to_owned(),
        )
    })?;
    let refresh_margin = head.refresh_margin.as_ref().and_then(|text| {
        crate::duration::parse_duration(text.get_ref())
            .map_err(|why| check.fail(text.span().start, format!("`refresh_margin`: {why}")))
            .ok()
    });
    if !check.errors.is_empty() {
        return Err(check.errors);
    }
    Ok((
        Credential {
            name: check.name.to_owned(),
            source,
            refresh_margin,
        },
        place(head.name.span().start),
    ))
}

/// One error where the parser would have stopped (a wrong type, an unknown key).
fn parser_error(place: &dyn Fn(usize) -> Location, at: usize, message: String) -> Vec<Error> {
    vec![Error::at(place(at), ErrorKind::Toml { message })]
}

/// The keys every table has, whatever its source.
struct Head {
    name: Spanned<String>,
    source: Spanned<String>,
    refresh_margin: Option<Spanned<String>>,
}

impl Head {
    /// Takes `name`, `source` and `refresh_margin` out of a table's `keys`.
    fn take(
        keys: &mut toml::de::DeTable<'_>,
        table_at: usize,
        place: &dyn Fn(usize) -> Location,
    ) -> Result<Self, Vec<Error>> {
        let mut string = |key: &str| -> Result<Option<Spanned<String>>, Vec<Error>> {
            let Some(value) = keys.remove(key) else {
                return Ok(None);
            };
            let span = value.span();
            match value.into_inner() {
                DeValue::String(s) => Ok(Some(Spanned::new(span, s.into_owned()))),
                other => Err(parser_error(
                    place,
                    span.start,
                    format!(
                        "invalid type: {}, expected a string for key `{key}`",
                        other.type_str()
                    ),
                )),
            }
        };
        let (name, source, refresh_margin) = (
            string("name")?,
            string("source")?,
            string("refresh_margin")?,
        );
        let missing = |key: &str| parser_error(place, table_at, format!("missing field `{key}`"));
        Ok(Self {
            name: name.ok_or_else(|| missing("name"))?,
            source: source.ok_or_else(|| missing("source"))?,
            refresh_margin,
        })
    }
}

/// Takes out of `keys` those `reader`'s source does not have: a key of another source is
/// recorded in `check` ("does not apply"), any other is returned as the parser's error.
fn take_foreign_keys(
    keys: &mut toml::de::DeTable<'_>,
    reader: &source::Reader,
    sources: &[source::Reader],
    check: &mut Checker<'_>,
) -> Vec<Error> {
    let foreign: Vec<String> = keys
        .iter()
        .map(|(key, _)| key.get_ref().to_string())
        .filter(|key| !reader.keys.contains(&key.as_str()))
        .collect();
    let mut unknown = Vec::new();
    for key in foreign {
        let Some((spanned_key, value)) = keys.remove_entry(key.as_str()) else {
            continue;
        };
        if sources.iter().any(|r| r.keys.contains(&key.as_str())) {
            check.fail(
                value.span().start,
                format!(
                    "`{key}` does not apply to source '{}': remove it",
                    reader.name
                ),
            );
        } else {
            let mut known: Vec<&str> = ["name", "source", "refresh_margin"]
                .into_iter()
                .chain(reader.keys.iter().copied())
                .collect();
            known.sort_unstable();
            unknown.extend(parser_error(
                check.place,
                spanned_key.span().start,
                format!(
                    "unknown field `{key}`, expected one of `{}`",
                    known.join("`, `")
                ),
            ));
        }
    }
    unknown
}

/// Checks the references between credentials from every source: unique names, assertions
/// that name an existing credential, and no loops. One error per problem, at the credential.
pub(crate) fn check_references(credentials: &[(Credential, Location)]) -> Vec<Error> {
    let mut errors = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let error = |at: &Location, name: &str, why: String| {
        Error::at(
            at.clone(),
            ErrorKind::Credential {
                name: name.to_owned(),
                why,
            },
        )
    };
    for (i, (credential, at)) in credentials.iter().enumerate() {
        if let Some(&first) = by_name.get(credential.name.as_str()) {
            let why = format!(
                "defined twice (first at {}): give each credential its own name",
                credentials[first].1
            );
            errors.push(error(at, &credential.name, why));
        } else {
            by_name.insert(&credential.name, i);
        }
    }
    let mut in_reported_loop = vec![false; credentials.len()];
    for (i, (credential, at)) in credentials.iter().enumerate() {
        let Some((key, target)) = credential.assertion_key() else {
            continue;
        };
        if !by_name.contains_key(target) {
            let why = format!(
                "`{key}` names '{target}', which is not a credential: define a \
                 [[credential]] with that name (usually source = \"github-oidc\")"
            );
            errors.push(error(at, &credential.name, why));
            continue;
        }
        if credentials[by_name[target]].0.is_x509_identity() {
            let why = format!(
                "`{key}` names '{target}', an X.509-SVID (spiffe-x509) with no token to \
                 present: name a token credential (usually source = \"github-oidc\")"
            );
            errors.push(error(at, &credential.name, why));
            continue;
        }
        // Each credential has at most one assertion, so the chain is a path; follow it.
        let mut chain = vec![i];
        let mut next = by_name.get(target).copied();
        while let Some(j) = next {
            if j == i {
                if !in_reported_loop[i] {
                    for &k in &chain {
                        in_reported_loop[k] = true;
                    }
                    let names: Vec<&str> = chain
                        .iter()
                        .chain([&i])
                        .map(|&k| credentials[k].0.name.as_str())
                        .collect();
                    let why = format!(
                        "its assertions loop back to it ({}): end the chain with a \
                         github-oidc, env or file credential",
                        names.join(" -> ")
                    );
                    errors.push(error(at, &credential.name, why));
                }
                break;
            }
            if chain.contains(&j) {
                break; // a loop further down the chain, reported at its own members
            }
            chain.push(j);
            next = credentials[j]
                .0
                .assertion()
                .and_then(|t| by_name.get(t).copied());
        }
    }
    errors
}

#[cfg(test)]
mod tests;
