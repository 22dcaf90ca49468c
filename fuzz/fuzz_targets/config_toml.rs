//! The TOML configuration file and the allowlist syntax (`egressd-config`): parse, validate,
//! build the policy, decide a few names. The same text is also read as an `--allow-domains`
//! list.

#![no_main]

use std::path::Path;

use egressd_config::{ConfigBuilder, Origin, Scheme, Target, TargetHost};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut file = ConfigBuilder::new();
    let _ = file.toml_str(text, Path::new("/nonexistent/egressd.toml"));
    decide_some(file.build());

    let mut flags = ConfigBuilder::new();
    let _ = flags.allow_list(text, Origin::Flag("--allow-domains"));
    let _ = flags.block_list(text, Origin::Flag("--block-domains"));
    decide_some(flags.build());
});

/// Runs the compiled policy on names and addresses that commonly appear in entries.
fn decide_some(config: Result<egressd_config::Config, egressd_config::Error>) {
    let Ok(config) = config else {
        return;
    };
    for name in [
        "github.com",
        "api.github.com",
        "a.b.example",
        "xn--e1a.test",
        "com",
    ] {
        for scheme in [Scheme::Http, Scheme::Https] {
            let _ = config.policy.decide(&Target {
                host: TargetHost::Name(name),
                port: 443,
                scheme,
            });
        }
    }
    let _ = config.policy.decide(&Target {
        host: TargetHost::Ip("192.0.2.1".parse().expect("a literal address parses")),
        port: 80,
        scheme: Scheme::Http,
    });
}
