use std::path::{Path, PathBuf};

use super::*;
use crate::{Reason, Scheme, Target, TargetHost};

const ALLOW: Origin = Origin::Flag("--allow-domains");

/// A scratch directory for this test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("egressd-config-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn decide(config: &Config, host: &str, port: u16, scheme: Scheme) -> crate::Decision {
    config.policy.decide(&Target {
        host: TargetHost::Name(host),
        port,
        scheme,
    })
}

fn toml(text: &str) -> Result<Config, Error> {
    let mut builder = ConfigBuilder::new();
    let _ = builder.toml_str(text, Path::new("egressd.toml"));
    builder.build()
}

fn messages(error: &Error) -> Vec<String> {
    error.errors().iter().map(ToString::to_string).collect()
}

#[test]
fn empty_builder_denies_everything_with_defaults() {
    let config = ConfigBuilder::new().build().unwrap();
    assert!(config.policy.entries().is_empty());
    assert_eq!(config.policy.ports(), [80, 443]);
    assert_eq!(config.timeouts, Timeouts::default());
    assert_eq!(config.timeouts.idle, Duration::from_mins(5));
    assert_eq!(
        decide(&config, "github.com", 443, Scheme::Https).reason,
        Reason::EmptyAllowlist
    );
}

#[test]
fn flag_lists_split_on_commas_and_whitespace() {
    let mut builder = ConfigBuilder::new();
    builder
        .allow_list(" github.com,*.githubusercontent.com  api.x.com,, ", ALLOW)
        .unwrap();
    builder
        .block_list("gist.github.com", Origin::Flag("--block-domains"))
        .unwrap();
    let config = builder.build().unwrap();
    let texts: Vec<_> = config
        .policy
        .entries()
        .iter()
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "github.com",
            "*.githubusercontent.com",
            "api.x.com",
            "gist.github.com"
        ]
    );
    let d = decide(&config, "github.com", 443, Scheme::Https);
    assert_eq!(d.to_string(), "allow github.com (--allow-domains)");
    let d = decide(&config, "gist.github.com", 443, Scheme::Https);
    assert_eq!(
        d.to_string(),
        "deny gist.github.com (--block-domains): blocked by the blocklist"
    );
}

#[test]
fn flag_errors_name_the_flag_and_every_bad_entry() {
    let mut builder = ConfigBuilder::new();
    let err = builder
        .allow_list("github.com,*.*.com,a..b", ALLOW)
        .unwrap_err();
    let lines = messages(&err);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("--allow-domains: invalid domain or pattern '*.*.com': "));
    assert!(lines[1].starts_with("--allow-domains: invalid domain or pattern 'a..b': "));
    let err = builder.allow_list("localhost", ALLOW).unwrap_err();
    assert!(err.to_string().contains("loopback_ports"), "{err}");
    // build() reports them all again, in order.
    assert_eq!(builder.build().unwrap_err().errors().len(), 3);
}

#[test]
fn allow_file_entries_comments_and_positions() {
    let scratch = Scratch::new("allow-file");
    let path = scratch.write(
        "domains.txt",
        "# allowed hosts\n\ngithub.com, api.x.com  # trailing comment\n  *.github.com\n",
    );
    let mut builder = ConfigBuilder::new();
    builder.allow_file(&path).unwrap();
    let config = builder.build().unwrap();
    assert_eq!(config.policy.entries().len(), 3);
    let d = decide(&config, "api.x.com", 443, Scheme::Https);
    assert_eq!(
        d.to_string(),
        format!("allow api.x.com ({}:3)", path.display())
    );
    let d = decide(&config, "a.github.com", 443, Scheme::Https);
    assert_eq!(
        d.rule.unwrap().to_string(),
        format!("*.github.com (from {}:4)", path.display())
    );

    let bad = scratch.write("bad.txt", "github.com\n\n  ok.com, exa$mple.com\n*\n");
    let mut builder = ConfigBuilder::new();
    let err = builder.allow_file(&bad).unwrap_err();
    let lines = messages(&err);
    let p = bad.display();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with(&format!(
        "{p}:3:11: invalid domain or pattern 'exa$mple.com'"
    )));
    assert!(lines[1].starts_with(&format!("{p}:4:1: invalid domain or pattern '*'")));

    let mut builder = ConfigBuilder::new();
    let err = builder
        .allow_file(&scratch.0.join("missing.txt"))
        .unwrap_err();
    assert!(matches!(err, Error::Read { .. }));
    assert!(
        err.to_string()
            .contains("missing.txt: cannot read the file: "),
        "{err}"
    );
}

const FULL: &str = r#"
allow_domains = ["github.com", "*.githubusercontent.com"]
block_domains = ["gist.github.com"]
ports = [80, 443]
loopback_ports = [8080]
dns_servers = ["10.0.0.2:53", "fd00::53"]
resolve = ["api.example.com:10.200.1.2", "API.example.com.:[fd00::2]"]
upstream_ca = "ca/upstream.pem"
audit_log = "/var/log/egressd/audit.jsonl"

[timeouts]
classify = "500ms"
idle = "5m"

[[rule]]
domain = "internal.example.com"
ports = [8443]
allow_private = true
"#;

#[test]
fn toml_file_sets_everything_with_origins() {
    let scratch = Scratch::new("toml-full");
    let path = scratch.write("egressd.toml", FULL);
    let mut builder = ConfigBuilder::new();
    builder.toml_file(&path).unwrap();
    let config = builder.build().unwrap();

    let p = path.display();
    let d = decide(&config, "github.com", 443, Scheme::Https);
    assert_eq!(d.to_string(), format!("allow github.com ({p}:2)"));
    let d = decide(&config, "gist.github.com", 443, Scheme::Https);
    assert_eq!(
        d.to_string(),
        format!("deny gist.github.com ({p}:3): blocked by the blocklist")
    );
    let d = decide(&config, "internal.example.com", 8443, Scheme::Https);
    assert!(d.is_allow() && d.allows_private(), "{d}");
    assert_eq!(
        d.to_string(),
        format!("allow internal.example.com ({p}:16)")
    );
    let d = config.policy.decide(&Target {
        host: TargetHost::Ip("127.0.0.1".parse().unwrap()),
        port: 8080,
        scheme: Scheme::Http,
    });
    assert_eq!(d.reason, Reason::LoopbackPortAllowed);

    assert_eq!(
        config.dns_servers,
        [
            "10.0.0.2:53".parse().unwrap(),
            "[fd00::53]:53".parse().unwrap()
        ]
    );
    assert_eq!(
        config.resolve,
        [ResolveOverride {
            host: "api.example.com".into(),
            addrs: vec!["10.200.1.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        }]
    );
    assert_eq!(config.upstream_ca, Some(scratch.0.join("ca/upstream.pem")));
    assert_eq!(
        config.audit_log,
        Some(PathBuf::from("/var/log/egressd/audit.jsonl"))
    );
    assert_eq!(
        config.timeouts,
        Timeouts {
            classify: Duration::from_millis(500),
            idle: Duration::from_mins(5),
            ..Timeouts::default()
        }
    );
}

#[test]
fn toml_ports_replace_the_default() {
    let config = toml("allow_domains = [\"github.com\"]\nports = [443]\n").unwrap();
    assert_eq!(config.policy.ports(), [443]);
    assert_eq!(
        decide(&config, "github.com", 80, Scheme::Http).reason,
        Reason::PortNotAllowed
    );
}

#[test]
fn toml_bad_entry_points_at_line_and_column() {
    let err =
        toml("# comment\nallow_domains = [\n  \"github.com\",\n  \"*.*.com\",\n]\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "egressd.toml:4:3: invalid domain or pattern '*.*.com': it has two or more '*' labels \
         and at most one other label, so it matches almost every domain: name a longer suffix, \
         such as '*.example.com'"
    );
    assert_eq!(
        err.location(),
        Some(&Location::File {
            path: "egressd.toml".into(),
            line: 4,
            column: 3
        })
    );
}

#[test]
fn toml_unknown_key_is_an_error_with_its_place() {
    let err = toml("allow_domains = []\nalow_domains = [\"x.com\"]\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("egressd.toml:2:1: unknown field `alow_domains`"),
        "{text}"
    );
    assert!(text.contains("allow_domains"), "{text}");
    let err = toml("[[rule]]\ndomain = \"a.com\"\nport = [1]\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("egressd.toml:3:1: unknown field `port`"),
        "{err}"
    );
    let err = toml("ports = [70000]\n").unwrap_err();
    assert!(err.to_string().starts_with("egressd.toml:1:10: "), "{err}");
}

#[test]
fn all_errors_of_a_build_are_reported_at_once() {
    let text = r#"allow_domains = ["ok.com", "bad..com"]
block_domains = ["localhost"]
loopback_ports = [0]
dns_servers = ["dns.google"]
resolve = ["h:::1"]
[timeouts]
idle = "forever"
[[rule]]
domain = "*"
"#;
    let mut builder = ConfigBuilder::new();
    let file_errors = builder.toml_str(text, Path::new("e.toml")).unwrap_err();
    assert_eq!(file_errors.errors().len(), 7);
    let _ = builder.allow_list("a b;c", ALLOW);
    let _ = builder.resolve("nocolon");
    let _ = builder.dns_server("1.2.3.4:0");
    builder.resolve("ok.com:1.2.3.4").unwrap();
    let err = builder.build().unwrap_err();
    assert!(matches!(err, Error::Partial(_)));
    let lines = messages(&err);
    let prefixes: Vec<_> = lines
        .iter()
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        prefixes,
        [
            "e.toml:1:28",
            "e.toml:2:18",
            "e.toml:3:19",
            "e.toml:4:16",
            "e.toml:5:12",
            "e.toml:7:8",
            "e.toml:9:10",
            "--allow-domains",
            "--resolve",
            "--dns-server",
        ],
        "{lines:#?}"
    );
    assert!(
        lines[5].contains("invalid duration 'forever' for timeouts.idle"),
        "{}",
        lines[5]
    );
    assert!(lines[7].contains("'b;c'"), "{}", lines[7]);
    assert_eq!(err.to_string().lines().count(), 10);
}

#[test]
fn resolve_and_dns_server_flags() {
    let mut builder = ConfigBuilder::new();
    builder.resolve("api.example.com:10.0.0.1").unwrap();
    builder.resolve("API.EXAMPLE.COM:10.0.0.2").unwrap();
    builder.resolve("api.example.com:10.0.0.1").unwrap();
    builder.resolve("other.com:[::1]").unwrap();
    let err = builder.resolve("other.com:::1").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("--resolve: invalid resolve override"),
        "{err}"
    );
    assert!(err.to_string().contains("other.com:[::1]"), "{err}");
    builder.dns_server("10.0.0.53").unwrap();
    builder.dns_server("[fd00::53]:5353").unwrap();
    let err = builder.build().unwrap_err();
    assert_eq!(err.errors().len(), 1);

    let mut builder = ConfigBuilder::new();
    builder.resolve("api.example.com:10.0.0.1").unwrap();
    builder.resolve("api.example.com:10.0.0.2").unwrap();
    builder.dns_server("10.0.0.53").unwrap();
    let config = builder.build().unwrap();
    assert_eq!(config.resolve.len(), 1);
    assert_eq!(config.resolve[0].addrs.len(), 2);
    assert_eq!(config.dns_servers, ["10.0.0.53:53".parse().unwrap()]);
}

#[test]
fn later_sources_replace_single_values_and_extend_lists() {
    let mut builder = ConfigBuilder::new();
    builder.allow_list("github.com", ALLOW).unwrap();
    builder
        .toml_str(
            "allow_domains = [\"x.com\"]\naudit_log = \"a.jsonl\"\n",
            Path::new("/etc/e/e.toml"),
        )
        .unwrap();
    builder.audit_log("/tmp/b.jsonl".into());
    builder.upstream_ca("/tmp/ca.pem".into());
    builder.loopback_ports(&[3000], Origin::Flag("--loopback-ports"));
    builder.loopback_ports(&[0], Origin::Flag("--loopback-ports"));
    builder.entry(Entry::parse("example.org", List::Allow, Origin::Builtin("default")).unwrap());
    let err = builder.build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "--loopback-ports: port 0 is not a valid destination port: use a port from 1 to 65535"
    );

    let mut builder = ConfigBuilder::new();
    builder.allow_list("github.com", ALLOW).unwrap();
    builder
        .toml_str(
            "allow_domains = [\"x.com\"]\naudit_log = \"a.jsonl\"\n",
            Path::new("/etc/e/e.toml"),
        )
        .unwrap();
    let config = builder.build().unwrap();
    assert_eq!(config.policy.entries().len(), 2);
    assert_eq!(config.audit_log, Some(PathBuf::from("/etc/e/a.jsonl")));
}

#[test]
fn dns_denied_answer_is_configurable_and_checked() {
    assert_eq!(toml("").unwrap().dns_denied, DnsDenied::NxDomain);
    let config = toml("[dns]\ndenied = \"refused\"\n").unwrap();
    assert_eq!(config.dns_denied, DnsDenied::Refused);
    let err = toml("[dns]\ndenied = \"drop\"\n").unwrap_err();
    assert_eq!(
        messages(&err),
        vec!["egressd.toml:2:10: dns.denied = \"drop\": expected \"nxdomain\" or \"refused\""]
    );
}

#[test]
fn intercept_tables_are_validated_and_allow_their_host() {
    let config = toml(
        "[[credential]]\nname = \"k\"\nsource = \"env\"\nvar = \"K\"\n\n[[intercept]]\nhost = \"api.example.com\"\ncredential = \"k\"\nheader = \"api-key\"\nformat = \"{token}\"\n",
    )
    .unwrap();
    let rules = config.intercepts.for_host("api.example.com");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].header, "api-key");
    assert!(
        decide(&config, "api.example.com", 443, Scheme::Https).is_allow(),
        "an intercepted host is allowed"
    );
    let err = toml(
        "[[intercept]]\nhost = \"api.example.com\"\ncredential = \"missing\"\nformat = \"no token here\"\npath_prefix = \"v1\"\n",
    )
    .unwrap_err();
    let all = messages(&err);
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all[0].starts_with("egressd.toml:3:14: no [[credential]] named 'missing'"),
        "{all:?}"
    );
    assert!(
        all[1].starts_with("egressd.toml:4:10: `format` must contain `{token}`"),
        "{all:?}"
    );
    assert!(
        all[2].starts_with("egressd.toml:5:15: `path_prefix` must start with '/'"),
        "{all:?}"
    );
}

#[test]
fn limits_and_new_timeouts_have_defaults_and_are_checked() {
    let config = toml("").unwrap();
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.limits.max_connections, defaults::MAX_CONNECTIONS);
    assert_eq!(config.timeouts.request_head, Duration::from_secs(30));

    let config = toml(
        "[timeouts]\ntls_handshake = \"3s\"\nrequest_head = \"7s\"\n\
         [limits]\nmax_connections = 10\nmax_header_bytes = 2048\n\
         max_body_bytes = 5000000000\n",
    )
    .unwrap();
    assert_eq!(config.timeouts.tls_handshake, Duration::from_secs(3));
    assert_eq!(config.timeouts.request_head, Duration::from_secs(7));
    assert_eq!(
        config.limits,
        Limits {
            max_connections: 10,
            max_header_bytes: 2048,
            max_body_bytes: Some(5_000_000_000),
        }
    );
    assert_eq!(
        Limits::default().max_body_bytes,
        None,
        "no body limit by default"
    );

    let err = toml("[limits]\nmax_connections = 0\nmax_header_bytes = 100\nmax_body_bytes = 0\n")
        .unwrap_err();
    let lines = messages(&err);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[2].starts_with("egressd.toml:4:18: "), "{}", lines[2]);
    assert!(
        lines[2].contains("limits.max_body_bytes = 0"),
        "{}",
        lines[2]
    );
    assert!(toml("[limits]\nmax_body_bytes = -1\n").is_err());
    assert!(lines[0].starts_with("egressd.toml:2:19: "), "{}", lines[0]);
    assert!(
        lines[0].contains("limits.max_connections = 0"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("from 1024 to 1048576"), "{}", lines[1]);
    assert!(toml("[limits]\nmax_conections = 1\n").is_err());

    let mut builder = ConfigBuilder::new();
    builder.limits(Limits {
        max_connections: 0,
        ..Limits::default()
    });
    let err = builder.build().unwrap_err();
    assert!(err.to_string().contains("limits.max_connections"), "{err}");
}
