//! AWF's `--config` file (JSON, `shared/reference/awf.md` §1.2, §2.1), closed-world: a key
//! egressd does not know is an error naming it, as AWF's schema (`additionalProperties:
//! false`) makes it. Keys that AWF honours with Docker or the api-proxy are either refused
//! (they would change what is enforced) or accepted with a warning (they only tune the
//! budgets and limits of the api-proxy, which egressd does not enforce); none is ignored
//! silently.

use std::path::PathBuf;

use serde_json::{Map, Value};

/// What egressd takes from an AWF configuration file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AwfConfig {
    /// `network.allowDomains`.
    pub allow_domains: Vec<String>,
    /// `network.blockDomains`.
    pub block_domains: Vec<String>,
    /// `network.topologyAttach`: container names, added to the allowlist as AWF does.
    pub topology_attach: Vec<String>,
    /// `logging.proxyLogsDir`.
    pub proxy_logs_dir: Option<PathBuf>,
    /// `logging.auditDir`.
    pub audit_dir: Option<PathBuf>,
    /// `logging.logLevel`.
    pub log_level: Option<String>,
    /// The AWF version named by `container.imageTag` (`0.28.4,squid=sha256:...`).
    pub version: Option<String>,
    /// `[WARN]` lines for keys accepted without effect.
    pub warnings: Vec<String>,
    /// `apiProxy.maxRuns` (alias `maxTurns`) and `apiProxy.maxEffectiveTokens`.
    pub budget: egressd_config::awf::apiproxy::Budget,
}

/// Parses the JSON text of an AWF configuration file.
///
/// # Errors
///
/// Invalid JSON, a value of the wrong type, an unknown key, or a key egressd refuses; the
/// message names the key (`network.foo`).
pub fn parse(text: &str) -> Result<AwfConfig, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let root = object(&root, "the configuration")?;
    let mut config = AwfConfig::default();
    for (key, value) in root {
        match key.as_str() {
            "$schema" => {
                string(value, "$schema")?;
            }
            "network" => network(&mut config, object(value, "network")?)?,
            "apiProxy" => api_proxy(&mut config, object(value, "apiProxy")?)?,
            "container" => {
                for (k, v) in object(value, "container")? {
                    match k.as_str() {
                        "imageTag" => {
                            let tag = string(v, "container.imageTag")?;
                            let version = tag.split(',').next().unwrap_or("").trim();
                            if !version.is_empty()
                                && version.chars().all(|c| c.is_ascii_digit() || c == '.')
                            {
                                config.version = Some(version.to_owned());
                            }
                        }
                        _ => return Err(refused(&format!("container.{k}"), DOCKER)),
                    }
                }
            }
            "logging" => {
                for (k, v) in object(value, "logging")? {
                    let path = format!("logging.{k}");
                    match k.as_str() {
                        "proxyLogsDir" => config.proxy_logs_dir = Some(string(v, &path)?.into()),
                        "auditDir" => config.audit_dir = Some(string(v, &path)?.into()),
                        "logLevel" => config.log_level = Some(string(v, &path)?.to_owned()),
                        _ => return Err(unknown(&path)),
                    }
                }
            }
            "security" => {
                for (k, v) in object(value, "security")? {
                    match k.as_str() {
                        "sslBump" if v == &Value::Bool(false) => {}
                        "sslBump" => {
                            return Err(refused(
                                "security.sslBump",
                                "URL-level filtering is not supported yet",
                            ));
                        }
                        _ => return Err(unknown(&format!("security.{k}"))),
                    }
                }
            }
            "chroot" | "dind" | "runner" | "filesystem" | "enclaves" => {
                return Err(refused(key, DOCKER));
            }
            _ => return Err(unknown(key)),
        }
    }
    Ok(config)
}

const DOCKER: &str = "it configures AWF's containers; egressd runs the command on the host";
const API_PROXY: &str = "not enforced: egressd's api-proxy enforces maxRuns and maxEffectiveTokens, not AI credits, cache-miss limits, token steering or model aliases";

fn network(config: &mut AwfConfig, network: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in network {
        let path = format!("network.{k}");
        match k.as_str() {
            "allowDomains" => config.allow_domains = strings(v, &path)?,
            "blockDomains" => config.block_domains = strings(v, &path)?,
            "isolation" => {
                if !bool_value(v, &path)? {
                    config.warnings.push(
                        "network.isolation=false is ignored: the sandbox is always isolated"
                            .to_owned(),
                    );
                }
            }
            "topologyAttach" => {
                config.topology_attach = strings(v, &path)?;
                if !config.topology_attach.is_empty() {
                    config.warnings.push(format!(
                        "network.topologyAttach ({}): egressd attaches no containers; the names \
                         are only added to the allowlist",
                        config.topology_attach.join(", ")
                    ));
                }
            }
            "dnsServers"
            | "upstreamProxy"
            | "enableHostAccess"
            | "allowHostPorts"
            | "allowHostServicePorts"
            | "legacySecurity"
            | "dnsOverHttps"
            | "enableDlp" => {
                return Err(refused(
                    &path,
                    "not supported by egressd yet (see the README)",
                ));
            }
            _ => return Err(unknown(&path)),
        }
    }
    Ok(())
}

fn api_proxy(config: &mut AwfConfig, api: &Map<String, Value>) -> Result<(), String> {
    let mut unenforced = Vec::new();
    for (k, v) in api {
        match k.as_str() {
            "enabled" => {
                if !bool_value(v, "apiProxy.enabled")? {
                    return Err(refused(
                        "apiProxy.enabled=false",
                        "the api-proxy can no longer be disabled (AWF refuses it too)",
                    ));
                }
            }
            "maxRuns" | "maxTurns" => {
                config.budget.max_runs = Some(positive(v, &format!("apiProxy.{k}"))?);
            }
            "maxEffectiveTokens" => {
                config.budget.max_effective_tokens =
                    Some(positive(v, "apiProxy.maxEffectiveTokens")?);
            }
            "enableTokenSteering"
            | "maxAiCredits"
            | "maxCacheMisses"
            | "models"
            | "allowedModels"
            | "disallowedModels"
            | "modelFallback" => unenforced.push(format!("apiProxy.{k}")),
            _ => {
                return Err(refused(
                    &format!("apiProxy.{k}"),
                    "not supported yet by egressd's api-proxy",
                ));
            }
        }
    }
    if !unenforced.is_empty() {
        config
            .warnings
            .push(format!("{}: {API_PROXY}", unenforced.join(", ")));
    }
    Ok(())
}

/// A positive integer (a number, or a string of digits as templates sometimes give).
fn positive(v: &Value, path: &str) -> Result<u64, String> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{path} must be a positive integer"))
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be a JSON object"))
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    v.as_str().ok_or_else(|| format!("{path} must be a string"))
}

fn bool_value(v: &Value, path: &str) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{path} must be true or false"))
}

fn strings(v: &Value, path: &str) -> Result<Vec<String>, String> {
    let bad = || format!("{path} must be an array of strings");
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|s| s.as_str().map(str::to_owned).ok_or_else(bad))
        .collect()
}

fn unknown(path: &str) -> String {
    format!("unknown configuration key {path}")
}

fn refused(path: &str, why: &str) -> String {
    format!("configuration key {path} is not supported by egressd: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape gh-aw writes (`shared/reference/awf.md` §1.2).
    const SMOKE: &str = r#"{"$schema":"https://github.com/github/gh-aw-firewall/releases/download/v0.28.4/awf-config.schema.json","network":{"allowDomains":["*.githubusercontent.com","github.com"],"isolation":true,"topologyAttach":["awmg-mcpg"]},"apiProxy":{"enabled":true,"enableTokenSteering":true,"maxRuns":500,"maxAiCredits":1000,"maxCacheMisses":5,"models":{}},"container":{"imageTag":"0.28.4,squid=sha256:aa,agent=sha256:bb"},"logging":{"proxyLogsDir":"/tmp/gh-aw/sandbox/firewall/logs","auditDir":"/tmp/gh-aw/sandbox/firewall/audit"}}"#;

    #[test]
    fn the_gh_aw_smoke_config_maps_every_key() {
        let c = parse(SMOKE).unwrap();
        assert_eq!(c.allow_domains, ["*.githubusercontent.com", "github.com"]);
        assert_eq!(c.topology_attach, ["awmg-mcpg"]);
        assert_eq!(c.version.as_deref(), Some("0.28.4"));
        assert_eq!(
            c.proxy_logs_dir,
            Some(PathBuf::from("/tmp/gh-aw/sandbox/firewall/logs"))
        );
        assert_eq!(
            c.audit_dir,
            Some(PathBuf::from("/tmp/gh-aw/sandbox/firewall/audit"))
        );
        // Nothing accepted without effect goes unsaid.
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("topologyAttach")));
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("apiProxy.enableTokenSteering, apiProxy.maxAiCredits")),
            "{:?}",
            c.warnings
        );
        assert!(!c.warnings.iter().any(|w| w.contains("apiProxy.maxRuns")));
        assert_eq!(c.budget.max_runs, Some(500));
        let c = parse(r#"{"apiProxy":{"maxTurns":"7","maxEffectiveTokens":1000}}"#).unwrap();
        assert_eq!(
            (c.budget.max_runs, c.budget.max_effective_tokens),
            (Some(7), Some(1000))
        );
        let err = parse(r#"{"apiProxy":{"maxRuns":0}}"#).unwrap_err();
        assert!(
            err.contains("apiProxy.maxRuns must be a positive integer"),
            "{err}"
        );
    }

    #[test]
    fn block_domains_log_level_and_security() {
        let c = parse(
            r#"{"network":{"blockDomains":["evil.com"]},"logging":{"logLevel":"warn"},
                "security":{"sslBump":false}}"#,
        )
        .unwrap();
        assert_eq!(c.block_domains, ["evil.com"]);
        assert_eq!(c.log_level.as_deref(), Some("warn"));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        assert_eq!(
            parse(r#"{"nework":{}}"#).unwrap_err(),
            "unknown configuration key nework"
        );
        assert_eq!(
            parse(r#"{"network":{"allowDomain":["x"]}}"#).unwrap_err(),
            "unknown configuration key network.allowDomain"
        );
        assert_eq!(
            parse(r#"{"logging":{"x":1}}"#).unwrap_err(),
            "unknown configuration key logging.x"
        );
    }

    #[test]
    fn keys_needing_docker_or_the_api_proxy_are_refused_by_name() {
        for (text, key) in [
            (
                r#"{"container":{"memoryLimit":"6g"}}"#,
                "container.memoryLimit",
            ),
            (r#"{"chroot":{}}"#, "chroot"),
            (
                r#"{"apiProxy":{"enabled":false}}"#,
                "apiProxy.enabled=false",
            ),
            (r#"{"apiProxy":{"caCert":"x"}}"#, "apiProxy.caCert"),
            (r#"{"security":{"sslBump":true}}"#, "security.sslBump"),
            (
                r#"{"network":{"enableHostAccess":true}}"#,
                "network.enableHostAccess",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                e.starts_with(&format!("configuration key {key} is not supported")),
                "{e}"
            );
        }
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(
            parse(r#"{"network":{"allowDomains":"github.com"}}"#)
                .unwrap_err()
                .contains("network.allowDomains must be an array of strings")
        );
        assert!(parse("not json").unwrap_err().starts_with("invalid JSON"));
    }
}
