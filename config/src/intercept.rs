//! `[[intercept]]` rules: the hosts egressd terminates TLS for, and what it injects there.
//!
//! Everything else stays pass-through (DESIGN decision 4). A rule names a host (AWF domain
//! syntax: `api.example.com` covers its subdomains, `*.example.com` only subdomains), and
//! optionally a path prefix and methods that narrow where its credential is injected. A
//! rule without a credential asks for strict interception only: per-request `Host` /
//! `:authority` checks, no injection.
//!
//! ```toml
//! [[intercept]]
//! host = "my-resource.openai.azure.com"
//! credential = "azure-openai"         # a [[credential]] name
//! header = "Authorization"            # default
//! format = "Bearer {token}"           # default; e.g. "{token}" for `api-key`, or
//!                                     # "{scheme} {token}": the token's own scheme (below)
//! path_prefix = "/openai/"            # optional: inject only below this path
//! methods = ["GET", "POST"]           # optional: inject only for these methods
//! strip = ["x-custom-key"]            # client headers to remove, beyond the defaults
//! # Headers set on every request that gets the credential; the client's values are replaced.
//! # `{run_id}` and `{run_attempt}` are GITHUB_RUN_ID / GITHUB_RUN_ATTEMPT (attempt "1" when
//! # unset); a header whose placeholder has no value (no GITHUB_RUN_ID) is not set.
//! set_headers = { "Copilot-Integration-Id" = "agentic-workflows" }
//! # URLs a model request may have the provider fetch (MCP servers, web fetch/search tools):
//! # "allowlist" (default: only allowed hosts), "deny" or "allow".
//! tool_urls = "allowlist"
//! # Headers added only when the client sent none (its own value is kept).
//! default_headers = { "X-Interaction-Id" = "{run_id}-{run_attempt}" }
//!
//! [[intercept]]                       # AWS: sign with the keys of an aws-web-identity credential
//! host = "bedrock-runtime.us-east-1.amazonaws.com"
//! credential = "bedrock"
//! sign = "aws-sigv4"
//! region = "us-east-1"
//! service = "bedrock"
//! ```
//!
//! An intercepted host is allowed implicitly (its rule is its allow entry). Requests to an
//! intercepted host that no credential rule covers are forwarded without a credential; where
//! the host has a credential rule, the headers that rule strips (the client's own
//! `Authorization`, `api-key`, ...) are removed from them too, so a placeholder or a key the
//! agent found never reaches the upstream.
//!
//! # SPIFFE workload identity (mTLS to the upstream)
//!
//! A rule may also name a `spiffe-x509` credential: egressd then presents that X.509-SVID as
//! its client certificate when it dials the upstream, and verifies the upstream's certificate
//! against the Workload API's trust bundle (not the web PKI) and its SPIFFE ID against the
//! rule. It combines with a bearer `credential` on the same rule (two identities at once):
//!
//! ```toml
//! [[intercept]]
//! host = "budget-backend.internal"
//! credential = "budget-agent"                   # Authorization: Bearer <Entra agent token>
//! spiffe = "runner-svid"                        # a [[credential]] with source = "spiffe-x509"
//! upstream_spiffe_ids = ["spiffe://aim.example.com/budget-backend"]
//! # upstream_trust_domain = "aim.example.com"   # instead: any ID of this trust domain
//! ```
//!
//! mTLS is a property of the connection, so it applies to every request to the rule's host,
//! whatever its path and method (`path_prefix` and `methods` narrow only the bearer
//! `credential`). Rules for the same host must not name different SPIFFE settings.
//!
//! # `{scheme}`
//!
//! GitHub tokens go to the Copilot API as `Authorization: Bearer <t>` on some hosts and
//! `Authorization: token <t>` on others (`reference/tokens.md` §4.5). A format may say
//! `{scheme}` instead of a fixed word: the proxy then writes the scheme the token's source
//! chose ([`AuthScheme`]: a `copilot` credential knows its token's type and the `scheme`
//! override), or, when the source leaves it open (GitHub OAuth tokens, `gho_`/`ghu_`, and every
//! other source), the scheme for the request's host: [`AuthScheme::for_host`].

use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{ErrorKind, Location};
use crate::policy::{Entry, List, Origin, Policy, Scheme, Target, TargetHost};

/// Client headers that are always removed on intercepted requests that get a credential:
/// the agent must not be able to choose (or learn about) the credential used.
pub const DEFAULT_STRIPPED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
];

/// One `[[intercept]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIntercept {
    /// The host pattern (AWF syntax).
    pub host: Spanned<String>,
    /// The `[[credential]]` to inject; none for strict interception only.
    pub credential: Option<Spanned<String>>,
    /// Header the credential goes in (default `Authorization`).
    pub header: Option<Spanned<String>>,
    /// Header value, with `{token}` where the token goes (default `Bearer {token}`).
    pub format: Option<Spanned<String>>,
    /// Inject only for paths starting with this.
    pub path_prefix: Option<Spanned<String>>,
    /// Inject only for these methods.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Extra client headers to remove.
    #[serde(default)]
    pub strip: Vec<Spanned<String>>,
    /// `"aws-sigv4"`: sign requests with the credential's AWS keys instead of a header.
    pub sign: Option<Spanned<String>>,
    /// AWS region for `sign = "aws-sigv4"` (e.g. `us-east-1`).
    pub region: Option<Spanned<String>>,
    /// AWS service for `sign = "aws-sigv4"` (e.g. `bedrock`, `s3`).
    pub service: Option<Spanned<String>>,
    /// Headers set (client values replaced) when the credential is applied.
    #[serde(default)]
    pub set_headers: std::collections::BTreeMap<String, Spanned<String>>,
    /// Headers added when the client sent none, when the credential is applied.
    #[serde(default)]
    pub default_headers: std::collections::BTreeMap<String, Spanned<String>>,
    /// A `spiffe-x509` credential: present its SVID to the upstream (mTLS).
    pub spiffe: Option<Spanned<String>>,
    /// With `spiffe`: the SPIFFE IDs the upstream may present.
    #[serde(default)]
    pub upstream_spiffe_ids: Vec<Spanned<String>>,
    /// With `spiffe`: the trust domain whose IDs the upstream may present.
    pub upstream_trust_domain: Option<Spanned<String>>,
    /// `deny`, `allowlist` (default) or `allow`: URLs a model request asks the provider to
    /// fetch (MCP servers, web fetch and search tools).
    pub tool_urls: Option<Spanned<String>>,
}

pub use crate::auth_scheme::AuthScheme;

/// Values the daemon passes for `{run_id}` / `{run_attempt}` in header templates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunVars {
    /// `GITHUB_RUN_ID`.
    pub run_id: Option<String>,
    /// `GITHUB_RUN_ATTEMPT`.
    pub run_attempt: Option<String>,
}

impl RunVars {
    /// `template` with its placeholders filled; `None` when one has no value.
    pub fn fill(&self, template: &str) -> Option<String> {
        let mut out = template.to_owned();
        if out.contains("{run_id}") {
            out = out.replace("{run_id}", self.run_id.as_deref()?);
        }
        if out.contains("{run_attempt}") {
            out = out.replace("{run_attempt}", self.run_attempt.as_deref().unwrap_or("1"));
        }
        Some(out)
    }
}

/// How a rule's credential is applied to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Apply {
    /// Put the token in `header` with `format` (the default).
    Header,
    /// Sign the request with AWS Signature Version 4 using the credential's keys.
    AwsSigV4 {
        /// The AWS region of the endpoint.
        region: String,
        /// The AWS service name used in the signature scope.
        service: String,
    },
}

/// A validated interception rule.
#[derive(Clone, Debug)]
pub struct InterceptRule {
    /// The host pattern, with where the rule came from.
    pub host: Arc<Entry>,
    /// The credential to inject, if any.
    pub credential: Option<String>,
    /// Header name, lowercase.
    pub header: String,
    /// Header value template containing `{token}` exactly once.
    pub format: String,
    /// Inject only below this path (always starts with `/`).
    pub path_prefix: Option<String>,
    /// Inject only for these methods (uppercase); empty means every method.
    pub methods: Vec<String>,
    /// Client headers removed before forwarding when this rule injects (lowercase),
    /// [`DEFAULT_STRIPPED`] included.
    pub strip: Vec<String>,
    /// How the credential is applied.
    pub apply: Apply,
    /// Headers set when the credential is applied (name lowercase, value); the client's
    /// values are replaced. Templates until [`ConfigBuilder::build`](crate::ConfigBuilder::build)
    /// fills `{run_id}`/`{run_attempt}`.
    pub set_headers: Vec<(String, String)>,
    /// Headers added when the credential is applied and the client sent none.
    pub default_headers: Vec<(String, String)>,
    /// SPIFFE mTLS to the upstream, for every request to this rule's host.
    pub spiffe: Option<SpiffeUpstream>,
    /// What a model request that gets the credential may ask the provider to fetch.
    pub tool_urls: ToolUrls,
}

/// What a model request may ask the provider to fetch by itself (`tool_urls`): the URLs of
/// MCP servers, web fetch and web search tools, Gemini's URL context (the fields are listed in
/// the proxy's `intercept/tools.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolUrls {
    /// Any tool field is refused (`403`).
    Deny,
    /// Tool URLs must name allowed hosts; tools that fetch what the model picks must list
    /// allowed domains (the default).
    #[default]
    Allowlist,
    /// Not checked.
    Allow,
}

impl ToolUrls {
    /// Parses `deny`, `allowlist` or `allow`.
    ///
    /// # Errors
    ///
    /// Any other word, with the choices.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "deny" => Ok(Self::Deny),
            "allowlist" => Ok(Self::Allowlist),
            "allow" => Ok(Self::Allow),
            other => Err(format!(
                "tool_urls = {other:?}: use \"allowlist\" (the default), \"deny\" or \"allow\""
            )),
        }
    }
}

/// A rule's SPIFFE settings: the SVID egressd presents and the upstream IDs it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeUpstream {
    /// The `spiffe-x509` credential whose SVID is the client certificate.
    pub svid: String,
    /// The SPIFFE IDs the upstream may present.
    pub peer: crate::spiffe::PeerAuthorization,
}

impl InterceptRule {
    /// Whether this rule's credential applies to a request with `method` and `path`.
    pub fn applies_to(&self, method: &str, path: &str) -> bool {
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == method);
        // A prefix ends at a segment boundary: `/copilot/mcp_registry` is not a prefix of
        // `/copilot/mcp_registryX`.
        let path_ok = self.path_prefix.as_deref().is_none_or(|prefix| {
            prefix.ends_with('/')
                || path.len() == prefix.len()
                || path.as_bytes().get(prefix.len()) == Some(&b'/')
        } && path.starts_with(prefix));
        method_ok && path_ok
    }

    /// The header value for `token`, with `Bearer` for a `{scheme}` in the format.
    pub fn header_value(&self, token: &str) -> String {
        self.header_value_with(token, AuthScheme::Bearer)
    }

    /// The header value for `token`, writing `scheme` for a `{scheme}` in the format.
    pub fn header_value_with(&self, token: &str, scheme: AuthScheme) -> String {
        // The scheme first: a token containing "{scheme}" must stay as it is.
        self.format
            .replacen("{scheme}", scheme.as_str(), 1)
            .replacen("{token}", token, 1)
    }

    /// Whether the format says `{scheme}` (the token's or the host's scheme, not a fixed one).
    pub fn wants_scheme(&self) -> bool {
        self.format.contains("{scheme}")
    }

    /// Fills `{run_id}`/`{run_attempt}` in the header templates; headers whose placeholder
    /// has no value are dropped.
    pub fn fill_headers(&mut self, vars: &RunVars) {
        for headers in [&mut self.set_headers, &mut self.default_headers] {
            *headers = headers
                .drain(..)
                .filter_map(|(name, template)| Some((name, vars.fill(&template)?)))
                .collect();
        }
    }
}

/// Every interception rule, with a matcher over their hosts.
#[derive(Clone, Debug, Default)]
pub struct Intercepts {
    rules: Vec<InterceptRule>,
    hosts: Option<Arc<Policy>>,
}

impl Intercepts {
    /// Builds the set; hosts are matched with the allowlist's own matcher.
    pub fn new(rules: Vec<InterceptRule>) -> Self {
        if rules.is_empty() {
            return Self::default();
        }
        let entries: Vec<Entry> = rules.iter().map(|r| (*r.host).clone()).collect();
        let hosts = Policy::new(entries, &[443], &[]);
        Self {
            rules,
            hosts: Some(Arc::new(hosts)),
        }
    }

    /// Whether no host is intercepted.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule, in file order.
    pub fn rules(&self) -> &[InterceptRule] {
        &self.rules
    }

    /// The rules for `host` (a TLS SNI), most specific host pattern first; empty when the
    /// host is not intercepted.
    pub fn for_host(&self, host: &str) -> Vec<&InterceptRule> {
        let Some(hosts) = &self.hosts else {
            return Vec::new();
        };
        let decision = hosts.decide(&Target {
            host: TargetHost::Name(host),
            port: 443,
            scheme: Scheme::Https,
        });
        if !decision.is_allow() {
            return Vec::new();
        }
        let Some(entry) = decision.rule else {
            return Vec::new();
        };
        self.rules
            .iter()
            .filter(|r| r.host.text == entry.text)
            .collect()
    }

    /// The host patterns, for the CA's name constraints.
    pub fn host_patterns(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.rules.iter().map(|r| r.host.text.clone()).collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// Validates one table; `place` turns a byte offset into the origin and error location.
pub(crate) fn parse(
    table: &FileIntercept,
    place: &dyn Fn(usize) -> (Origin, Location),
    credentials: &[crate::Credential],
) -> Result<InterceptRule, Vec<crate::Error>> {
    let mut errors = Vec::new();
    let (origin, at) = place(table.host.span().start);
    let host = match Entry::parse(table.host.get_ref(), List::Allow, origin) {
        Ok(e) if e.is_dead() => {
            errors.push(crate::Error::at(
                at,
                ErrorKind::InvalidValue(format!(
                    "intercept host '{}' can never match: {}",
                    table.host.get_ref(),
                    e.dead_reason().unwrap_or("it is not a domain")
                )),
            ));
            None
        }
        Ok(e) => Some(Arc::new(e)),
        Err(kind) => {
            errors.push(crate::Error::at(at, kind));
            None
        }
    };
    let credential = table
        .credential
        .as_ref()
        .map(|c| bearer_credential(c, place, credentials, &mut errors));
    let header = match &table.header {
        Some(h) => header_name(h, place, &mut errors),
        None => "authorization".to_owned(),
    };
    let format = match &table.format {
        Some(f) => check_format(f, place, &mut errors),
        None => "Bearer {token}".to_owned(),
    };
    let path_prefix = match &table.path_prefix {
        Some(p) if !p.get_ref().starts_with('/') => {
            errors.push(crate::Error::at(
                place(p.span().start).1,
                ErrorKind::InvalidValue("`path_prefix` must start with '/'".to_owned()),
            ));
            None
        }
        Some(p) => Some(p.get_ref().clone()),
        None => None,
    };
    let mut methods = Vec::new();
    for m in &table.methods {
        if is_token(m.get_ref()) {
            methods.push(m.get_ref().to_ascii_uppercase());
        } else {
            errors.push(crate::Error::at(
                place(m.span().start).1,
                ErrorKind::InvalidValue(format!("'{}' is not an HTTP method", m.get_ref())),
            ));
        }
    }
    let mut strip: Vec<String> = DEFAULT_STRIPPED.iter().map(|s| (*s).to_owned()).collect();
    strip.extend(
        table
            .strip
            .iter()
            .map(|h| header_name(h, place, &mut errors)),
    );
    let apply = apply(table, place, credentials, &mut errors);
    let set_headers = headers(&table.set_headers, place, &mut errors);
    let default_headers = headers(&table.default_headers, place, &mut errors);
    let spiffe = self::spiffe::parse(table, place, credentials, &mut errors);
    let tool_urls = match &table.tool_urls {
        Some(t) => ToolUrls::parse(t.get_ref()).unwrap_or_else(|why| {
            errors.push(crate::Error::at(
                place(t.span().start).1,
                ErrorKind::InvalidValue(why),
            ));
            ToolUrls::default()
        }),
        None => ToolUrls::default(),
    };
    match (host, errors.is_empty()) {
        (Some(host), true) => Ok(InterceptRule {
            host,
            credential,
            header,
            format,
            path_prefix,
            methods,
            strip,
            apply,
            set_headers,
            default_headers,
            spiffe,
            tool_urls,
        }),
        _ => Err(errors),
    }
}

/// `credential`: a configured credential that has a token (not a `spiffe-x509` one).
fn bearer_credential(
    c: &Spanned<String>,
    place: &dyn Fn(usize) -> (Origin, Location),
    credentials: &[crate::Credential],
    errors: &mut Vec<crate::Error>,
) -> String {
    let why = match credentials.iter().find(|n| n.name == *c.get_ref()) {
        Some(n) if n.is_x509_identity() => Some(format!(
            "'{}' is an X.509-SVID, not a token: name it with `spiffe = \"{}\"` to present it to the upstream",
            c.get_ref(),
            c.get_ref()
        )),
        Some(_) => None,
        None => Some(format!(
            "no [[credential]] named '{}': define it, or remove `credential` for strict interception only",
            c.get_ref()
        )),
    };
    if let Some(why) = why {
        errors.push(crate::Error::at(
            place(c.span().start).1,
            ErrorKind::InvalidValue(why),
        ));
    }
    c.get_ref().clone()
}

/// `set_headers` / `default_headers`: valid names that are not credential headers, values
/// without control characters whose only placeholders are `{run_id}` and `{run_attempt}`.
fn headers(
    table: &std::collections::BTreeMap<String, Spanned<String>>,
    place: &dyn Fn(usize) -> (Origin, Location),
    errors: &mut Vec<crate::Error>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in table {
        let mut fail = |why: String| {
            errors.push(crate::Error::at(
                place(value.span().start).1,
                ErrorKind::InvalidValue(why),
            ));
        };
        let lower = name.to_ascii_lowercase();
        if !is_token(name) {
            fail(format!("'{name}' is not a valid HTTP header name"));
            continue;
        }
        if DEFAULT_STRIPPED.contains(&lower.as_str()) || lower == "host" {
            fail(format!(
                "'{name}' cannot be set with a fixed value: credentials go in `header`/`format`"
            ));
            continue;
        }
        let rest = value
            .get_ref()
            .replace("{run_id}", "")
            .replace("{run_attempt}", "");
        if rest.contains(['{', '}']) {
            fail(format!(
                "header '{name}': the only placeholders are {{run_id}} and {{run_attempt}}"
            ));
        } else if value.get_ref().chars().any(char::is_control) {
            fail(format!(
                "header '{name}': control characters are not allowed"
            ));
        } else {
            out.push((lower, value.get_ref().clone()));
        }
    }
    out
}

/// `sign`/`region`/`service`, checked against the credential: AWS keys can only sign, and
/// only AWS keys can sign.
fn apply(
    table: &FileIntercept,
    place: &dyn Fn(usize) -> (Origin, Location),
    credentials: &[crate::Credential],
    errors: &mut Vec<crate::Error>,
) -> Apply {
    let aws_credential = table.credential.as_ref().is_some_and(|c| {
        credentials.iter().any(|k| {
            k.name == *c.get_ref() && matches!(k.source, crate::CredentialSource::AwsWebIdentity(_))
        })
    });
    let at = |offset| place(offset).1;
    let mut fail = |offset, why: String| {
        errors.push(crate::Error::at(at(offset), ErrorKind::InvalidValue(why)));
    };
    match &table.sign {
        None if aws_credential => {
            let c = table.credential.as_ref().map_or(0, |c| c.span().start);
            fail(c, "an aws-web-identity credential gives AWS keys, not a token: add sign = \"aws-sigv4\" with region and service".to_owned());
            Apply::Header
        }
        None => Apply::Header,
        Some(sign) if sign.get_ref() != "aws-sigv4" => {
            fail(
                sign.span().start,
                format!(
                    "sign = {:?}: the only signing method is \"aws-sigv4\"",
                    sign.get_ref()
                ),
            );
            Apply::Header
        }
        Some(sign) => {
            if !aws_credential {
                fail(
                    sign.span().start,
                    "sign = \"aws-sigv4\" needs an aws-web-identity credential".to_owned(),
                );
            }
            let mut required = |v: &Option<Spanned<String>>, key: &str| match v {
                Some(v)
                    if !v.get_ref().is_empty()
                        && v.get_ref()
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                {
                    v.get_ref().clone()
                }
                Some(v) => {
                    fail(
                        v.span().start,
                        format!("{key} = {:?} is not a valid AWS {key}", v.get_ref()),
                    );
                    String::new()
                }
                None => {
                    fail(
                        sign.span().start,
                        format!("sign = \"aws-sigv4\" needs `{key}`"),
                    );
                    String::new()
                }
            };
            let region = required(&table.region, "region");
            let service = required(&table.service, "service");
            Apply::AwsSigV4 { region, service }
        }
    }
}

/// A header name, lowercase; an error (and an empty name) when it is not a valid one.
fn header_name(
    h: &Spanned<String>,
    place: &dyn Fn(usize) -> (Origin, Location),
    errors: &mut Vec<crate::Error>,
) -> String {
    if is_token(h.get_ref()) {
        return h.get_ref().to_ascii_lowercase();
    }
    errors.push(crate::Error::at(
        place(h.span().start).1,
        ErrorKind::InvalidValue(format!("'{}' is not a valid HTTP header name", h.get_ref())),
    ));
    String::new()
}

/// A `format` template: `{token}` exactly once, no control characters.
fn check_format(
    f: &Spanned<String>,
    place: &dyn Fn(usize) -> (Origin, Location),
    errors: &mut Vec<crate::Error>,
) -> String {
    let why = if f.get_ref().matches("{token}").count() != 1 {
        "`format` must contain `{token}` exactly once"
    } else if f.get_ref().matches("{scheme}").count() > 1 {
        "`format` may contain `{scheme}` at most once"
    } else if f.get_ref().chars().any(char::is_control) {
        "`format` must not contain control characters"
    } else {
        return f.get_ref().clone();
    };
    errors.push(crate::Error::at(
        place(f.span().start).1,
        ErrorKind::InvalidValue(why.to_owned()),
    ));
    String::new()
}

/// An HTTP token (RFC 9110): header names and methods.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

mod spiffe;

pub(crate) use self::spiffe::spiffe_conflict;

#[cfg(test)]
mod tests;
