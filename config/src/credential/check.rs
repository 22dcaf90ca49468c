//! The checks every credential source uses: one [`Checker`] per `[[credential]]` table,
//! collecting each error at the value it is about, and the value validators.

use std::time::Duration;

use toml::Spanned;

pub(crate) use crate::authority::check_authority;
use crate::defaults;
use crate::duration::parse_duration;
use crate::error::{Error, ErrorKind, Location};

/// Collects the errors of one table.
pub(crate) struct Checker<'a> {
    /// The credential's name, for messages.
    pub(crate) name: &'a str,
    /// Offset of the table's `name` value, where "missing key" errors point.
    pub(crate) at_table: usize,
    /// Turns a byte offset of the file into a location.
    pub(crate) place: &'a dyn Fn(usize) -> Location,
    /// What went wrong, in the order found.
    pub(crate) errors: Vec<Error>,
}

impl Checker<'_> {
    /// Records an error about this credential at `offset`.
    pub(crate) fn fail(&mut self, offset: usize, why: String) {
        self.errors.push(Error::at(
            (self.place)(offset),
            ErrorKind::Credential {
                name: self.name.to_owned(),
                why,
            },
        ));
    }

    /// A required key's value, checked by `check`; records an error and yields "" when bad.
    pub(crate) fn required(
        &mut self,
        source: &str,
        key: &'static str,
        value: Option<&Spanned<String>>,
        check: fn(&str) -> Result<(), String>,
    ) -> String {
        let Some(value) = value else {
            self.fail(self.at_table, format!("source '{source}' needs `{key}`"));
            return String::new();
        };
        match check(value.get_ref()) {
            Ok(()) => value.get_ref().clone(),
            Err(why) => {
                self.fail(value.span().start, format!("`{key}`: {why}"));
                String::new()
            }
        }
    }

    /// The authority URL, checked and without a trailing slash (the default when absent).
    pub(crate) fn authority(&mut self, source: &str, value: Option<&Spanned<String>>) -> String {
        if value.is_none() {
            return defaults::ENTRA_AUTHORITY.to_owned();
        }
        self.required(source, "authority", value, check_authority)
            .trim_end_matches('/')
            .to_owned()
    }
}

impl Checker<'_> {
    /// An optional key's value checked by `check`, or `default` when absent.
    pub(crate) fn optional(
        &mut self,
        key: &'static str,
        value: Option<&Spanned<String>>,
        default: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> String {
        match value {
            None => default.to_owned(),
            Some(v) => self.required("", key, Some(v), check),
        }
    }

    /// A duration key in whole seconds within `min..=max`, or `default` when absent.
    pub(crate) fn seconds(
        &mut self,
        key: &'static str,
        value: Option<&Spanned<String>>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        let checked = parse_duration(value.get_ref())
            .map_err(str::to_owned)
            .and_then(|d| {
                if d.subsec_nanos() != 0 {
                    Err("write whole seconds, such as '3600s' or '1h'".to_owned())
                } else if d < min || d > max {
                    Err(format!(
                        "it must be between {}s and {}s",
                        min.as_secs(),
                        max.as_secs()
                    ))
                } else {
                    Ok(d)
                }
            });
        checked.unwrap_or_else(|why| {
            self.fail(value.span().start, format!("`{key}`: {why}"));
            default
        })
    }
}

/// A credential name: 1 to 64 letters, digits, `.`, `_`, `-`, starting alphanumeric.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(
            "a name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or \
             digit"
                .to_owned(),
        )
    }
}

/// A single value without whitespace: client IDs, scopes, audiences, references.
pub(crate) fn check_token(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("it is empty".to_owned());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace: give exactly one value".to_owned());
    }
    Ok(())
}

/// An Anthropic tagged ID: `prefix` then letters, digits, `_` or `-`.
pub(crate) fn check_tagged(value: &str, prefix: &str) -> Result<(), String> {
    let ok = value.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "write the tagged ID from the Claude Console, such as {prefix}01AbCd"
        ))
    }
}

/// A UUID in its 8-4-4-4-12 hex form.
pub(crate) fn check_uuid(value: &str) -> Result<(), String> {
    let groups: Vec<&str> = value.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err("write the organization's UUID, such as 00000000-0000-0000-0000-000000000000".into())
    }
}

/// A token type URI (RFC 8693 §3), such as `urn:ietf:params:oauth:token-type:jwt`.
pub(crate) fn check_token_type(value: &str) -> Result<(), String> {
    check_token(value)?;
    if !value.contains(':') {
        return Err("write a token type URI, such as urn:ietf:params:oauth:token-type:jwt".into());
    }
    Ok(())
}

/// A service account email; it goes into a URL path, so only `[A-Za-z0-9@._-]`.
pub(crate) fn check_email(value: &str) -> Result<(), String> {
    let ok = value.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && domain.contains('.') && !domain.contains('@')
    }) && value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err("write the service account's email, such as sa@project.iam.gserviceaccount.com".into())
    }
}

/// An IAM role ARN: `arn:PARTITION:iam::ACCOUNT:role/NAME` (AWS allows 20 to 2048 chars).
pub(crate) fn check_role_arn(value: &str) -> Result<(), String> {
    let help = "write the role's ARN, such as arn:aws:iam::123456789012:role/gha-bedrock";
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    let ok = (20..=2048).contains(&value.len())
        && parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|r| !r.is_empty())
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok { Ok(()) } else { Err(help.to_owned()) }
}

/// An STS `RoleSessionName`: 2 to 64 characters of `[\w+=,.@-]`.
pub(crate) fn check_session_name(value: &str) -> Result<(), String> {
    let ok = (2..=64).contains(&value.len())
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
        });
    if ok {
        Ok(())
    } else {
        Err("a role session name is 2 to 64 letters, digits or _+=,.@-".to_owned())
    }
}

/// `egressd-<credential name>`, cut to 64 characters (names are already valid characters).
pub(crate) fn default_session_name(credential: &str) -> String {
    let mut name = format!("egressd-{credential}");
    name.truncate(64);
    name
}

/// An Entra tenant: a GUID or a verified domain, not a multi-tenant alias.
pub(crate) fn check_tenant(tenant: &str) -> Result<(), String> {
    check_token(tenant)?;
    if !tenant
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
    {
        return Err("write the tenant ID (a GUID) or a verified domain".to_owned());
    }
    if ["common", "organizations", "consumers"].contains(&tenant.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "'{tenant}' cannot issue client-credentials tokens: write the tenant ID"
        ));
    }
    Ok(())
}

/// An environment variable name.
pub(crate) fn check_var(var: &str) -> Result<(), String> {
    let ok = var.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err("an environment variable name is letters, digits and '_'".to_owned())
    }
}
