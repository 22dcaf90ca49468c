//! The `[provenance]` table: who triggered the run, from the job's verified GitHub OIDC token.
//!
//! At `exec` start, when the job can mint GitHub Actions OIDC tokens, egressd mints one JWT for
//! [`ProvenanceConfig::audience`], verifies it against the issuer's published keys (the proxy
//! crate does that) and attaches its signed claims (`actor`, `actor_id`, `repository`, ...) to
//! every audit record and to `source = "per-actor"` credentials. This module only holds the
//! settings and says which issuer to expect; it does no I/O.
//!
//! # Format
//!
//! ```toml
//! [provenance]
//! audience = "egressd"     # the default: the `aud` requested for the provenance token
//! required = false         # the default; true: `exec` refuses to start without provenance
//! # issuer = "https://token.actions.githubusercontent.com/my-enterprise"
//! #   the default follows the GitHub deployment: token.actions.githubusercontent.com,
//! #   token.actions.<tenant>.ghe.com, or https://<host>/_services/token (GHES)
//! ```

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, ErrorKind, Location};
use crate::github::Deployment;

/// The audience of the provenance token when `audience` is not set.
pub const DEFAULT_AUDIENCE: &str = "egressd";

/// The issuer of github.com's Actions OIDC tokens (`reference/tokens.md` §1.5).
pub const DOTCOM_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// The `[provenance]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProvenance {
    /// The `aud` requested for the provenance token.
    pub audience: Option<Spanned<String>>,
    /// Refuse to start when provenance cannot be established.
    pub required: Option<bool>,
    /// The expected `iss`, instead of the deployment's.
    pub issuer: Option<Spanned<String>>,
}

/// Validated provenance settings; [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenanceConfig {
    /// The `aud` requested for (and required of) the provenance token.
    pub audience: String,
    /// True if and only if `exec` must refuse to start when the token cannot be minted or
    /// verified; otherwise the failure is reported and records say provenance is absent.
    pub required: bool,
    /// The expected issuer when set explicitly; `None` follows the deployment
    /// ([`expected_issuer`](Self::expected_issuer)).
    pub issuer: Option<String>,
}

impl Default for ProvenanceConfig {
    fn default() -> Self {
        Self {
            audience: DEFAULT_AUDIENCE.to_owned(),
            required: false,
            issuer: None,
        }
    }
}

impl ProvenanceConfig {
    /// The issuer the token must come from: the explicit `issuer`, else the one of the GitHub
    /// deployment (`reference/tokens.md` §1.5-§1.7), github.com's when none was derived.
    pub fn expected_issuer(&self, deployment: Option<&Deployment>) -> String {
        if let Some(issuer) = &self.issuer {
            return issuer.clone();
        }
        match deployment {
            None | Some(Deployment::DotCom) => DOTCOM_ISSUER.to_owned(),
            Some(Deployment::GheCom { subdomain, .. }) => {
                format!("https://token.actions.{subdomain}.ghe.com")
            }
            Some(Deployment::Ghes { host }) => format!("https://{host}/_services/token"),
        }
    }
}

/// Validates the table; `place` turns a byte offset of the file into a location.
pub(crate) fn parse(
    table: &FileProvenance,
    place: &dyn Fn(usize) -> Location,
) -> Result<ProvenanceConfig, Vec<Error>> {
    let mut errors = Vec::new();
    let mut fail = |offset: usize, why: String| {
        errors.push(Error::at(
            place(offset),
            ErrorKind::InvalidValue(format!("[provenance] {why}")),
        ));
    };
    let audience = match &table.audience {
        None => DEFAULT_AUDIENCE.to_owned(),
        Some(a) if a.get_ref().is_empty() || a.get_ref().chars().any(char::is_whitespace) => {
            fail(
                a.span().start,
                "`audience`: write one value without whitespace, such as \"egressd\"".into(),
            );
            String::new()
        }
        Some(a) => a.get_ref().clone(),
    };
    let issuer = table.issuer.as_ref().map(|i| {
        let text = i.get_ref().trim_end_matches('/');
        if let Err(why) = crate::authority::check_authority(text) {
            fail(i.span().start, format!("`issuer`: {why}"));
        }
        text.to_owned()
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ProvenanceConfig {
        audience,
        required: table.required.unwrap_or(false),
        issuer,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::ConfigBuilder;

    fn build(toml: &str) -> Result<ProvenanceConfig, crate::Error> {
        let mut builder = ConfigBuilder::new();
        let _ = builder.toml_str(toml, Path::new("egressd.toml"));
        builder.build().map(|c| c.provenance)
    }

    #[test]
    fn defaults_and_explicit_values() {
        assert_eq!(build("").unwrap(), ProvenanceConfig::default());
        let p = build(
            "[provenance]\naudience = \"egressd-ci\"\nrequired = true\n\
             issuer = \"https://token.actions.githubusercontent.com/acme/\"",
        )
        .unwrap();
        assert_eq!(p.audience, "egressd-ci");
        assert!(p.required);
        assert_eq!(
            p.expected_issuer(None),
            "https://token.actions.githubusercontent.com/acme"
        );
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        let err = build("[provenance]\nissuer = \"http://issuer.example\"").unwrap_err();
        assert!(err.to_string().contains("egressd.toml:2:"), "{err}");
        assert!(err.to_string().contains("https"), "{err}");
        assert!(build("[provenance]\naudience = \"a b\"").is_err());
        assert!(build("[provenance]\nrequire = true").is_err());
    }

    #[test]
    fn per_actor_credentials_need_a_table_and_nothing_else() {
        let mut builder = ConfigBuilder::new();
        builder
            .toml_str(
                "[[credential]]\nname = \"mine\"\nsource = \"per-actor\"\ntable = \"actors.toml\"",
                Path::new("/etc/egressd/egressd.toml"),
            )
            .unwrap();
        let config = builder.build().unwrap();
        assert_eq!(
            config.credentials[0].source,
            crate::CredentialSource::PerActor {
                table: "/etc/egressd/actors.toml".into()
            }
        );
        assert_eq!(config.credentials[0].source_name(), "per-actor");
        let mut builder = ConfigBuilder::new();
        let err = builder
            .toml_str(
                "[[credential]]\nname = \"mine\"\nsource = \"per-actor\"\nvar = \"X\"",
                Path::new("egressd.toml"),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs `table`"), "{err}");
        assert!(err.contains("`var` does not apply"), "{err}");
    }

    #[test]
    fn the_issuer_follows_the_deployment() {
        let p = ProvenanceConfig::default();
        assert_eq!(p.expected_issuer(None), DOTCOM_ISSUER);
        assert_eq!(p.expected_issuer(Some(&Deployment::DotCom)), DOTCOM_ISSUER);
        let tenant = Deployment::GheCom {
            host: "acme.ghe.com".into(),
            subdomain: "acme".into(),
        };
        assert_eq!(
            p.expected_issuer(Some(&tenant)),
            "https://token.actions.acme.ghe.com"
        );
        let server = Deployment::Ghes {
            host: "git.corp.example".into(),
        };
        assert_eq!(
            p.expected_issuer(Some(&server)),
            "https://git.corp.example/_services/token"
        );
    }
}
