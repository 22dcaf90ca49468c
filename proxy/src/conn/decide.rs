//! Stage 2: turn what the client said into a [`Verdict`]. Pure: no DNS, no I/O.
//!
//! The decision rests on the *name* the client sent (SNI, `Host`), never on the address it
//! dialled. The original destination only contributes its port, and its IP when there is no
//! name at all (TLS without SNI), in which case only a raw-IP allow entry lets it through.
//! Because nothing here resolves, a denied name is never looked up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use egressd_config::intercept::{InterceptRule, Intercepts};
use egressd_config::{Action, Decision, Policy, Reason, Scheme, Target, TargetHost};

use crate::conn::classify::{Classified, ClientHello};
use crate::host::HostName;

/// Where an allowed connection goes: the name (or raw IP) and the port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Dest {
    /// The name to resolve, or the IP a rule named.
    pub host: HostName,
    /// The port the client dialled.
    pub port: u16,
}

/// What to do with a connection or request.
#[derive(Clone, Debug)]
pub(crate) enum Verdict {
    /// Refuse it; `decision` says which rule and why.
    Deny {
        /// The destination that was refused.
        dest: Dest,
        /// The policy decision.
        decision: Decision,
    },
    /// Terminate TLS and judge each request by the `[[intercept]]` rules for its host
    /// (`intercept/`): the connection itself is allowed, as for `PassThrough`.
    Intercept {
        /// The destination.
        dest: Dest,
        /// The policy decision.
        decision: Decision,
        /// The rules naming the host, most specific first.
        rules: Vec<InterceptRule>,
    },
    /// Connect to `dest` and copy bytes untouched.
    PassThrough {
        /// The destination to resolve and dial.
        dest: Dest,
        /// The policy decision (its rule may allow private addresses).
        decision: Decision,
    },
}

impl Verdict {
    /// The destination, whatever the verdict.
    pub(crate) fn dest(&self) -> &Dest {
        match self {
            Self::Deny { dest, .. }
            | Self::Intercept { dest, .. }
            | Self::PassThrough { dest, .. } => dest,
        }
    }

    /// The policy decision, whatever the verdict.
    pub(crate) fn decision(&self) -> &Decision {
        match self {
            Self::Deny { decision, .. }
            | Self::Intercept { decision, .. }
            | Self::PassThrough { decision, .. } => decision,
        }
    }
}

/// Decides on a classified connection (or one plain-HTTP request) to `orig`.
///
/// TLS is decided on the SNI, or on `orig`'s IP when there is none; HTTP on the `Host`
/// header (a request without a usable `Host` is denied). The port is always `orig`'s.
pub(crate) fn decide(policy: &Policy, classified: &Classified, orig: SocketAddr) -> Verdict {
    let port = orig.port();
    let (host, scheme) = match classified {
        Classified::Tls(hello) => {
            let host = match &hello.sni {
                // One spelling per name in decisions and records: lower case, no final dot.
                Some(name) => {
                    HostName::Name(name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase())
                }
                None => HostName::Ip(orig.ip()),
            };
            (host, Scheme::Https)
        }
        Classified::Http(head) => match &head.host {
            Some(host) => (host.clone(), Scheme::Http),
            None => {
                let dest = Dest {
                    host: HostName::Ip(orig.ip()),
                    port,
                };
                let decision = Decision {
                    action: Action::Deny,
                    rule: None,
                    reason: Reason::InvalidName,
                };
                return Verdict::Deny { dest, decision };
            }
        },
    };
    decide_dest(policy, Dest { host, port }, scheme)
}

/// Decides on a TLS connection: as [`decide`], and when it may pass and interception is on
/// (`intercepts`), an `[[intercept]]` rule naming its SNI makes it [`Verdict::Intercept`].
pub(crate) fn decide_tls(
    policy: &Policy,
    intercepts: Option<&Intercepts>,
    classified: &Classified,
    orig: SocketAddr,
) -> Verdict {
    let verdict = decide(policy, classified, orig);
    let (
        Verdict::PassThrough { dest, decision },
        Some(intercepts),
        Classified::Tls(ClientHello { sni: Some(sni), .. }),
    ) = (&verdict, intercepts, classified)
    else {
        return verdict;
    };
    let rules = intercepts.for_host(sni);
    if rules.is_empty() {
        return verdict;
    }
    Verdict::Intercept {
        dest: dest.clone(),
        decision: decision.clone(),
        rules: rules.into_iter().cloned().collect(),
    }
}

/// Decides on a connection to a loopback `orig`, which is relayed without classification.
pub(crate) fn decide_loopback(policy: &Policy, orig: SocketAddr) -> Verdict {
    // A connect to the unspecified address reaches loopback: decide and dial it as such.
    let ip = match orig.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let dest = Dest {
        host: HostName::Ip(ip),
        port: orig.port(),
    };
    // Loopback destinations are decided on the port list alone; the scheme is unknown.
    decide_dest(policy, dest, Scheme::Https)
}

fn decide_dest(policy: &Policy, dest: Dest, scheme: Scheme) -> Verdict {
    let host = match &dest.host {
        HostName::Ip(ip) => TargetHost::Ip(*ip),
        HostName::Name(name) => TargetHost::Name(name),
    };
    let decision = policy.decide(&Target {
        host,
        port: dest.port,
        scheme,
    });
    match decision.action {
        // Audit-only: the denial stays in `decision` (and so in the record), unenforced.
        Action::Allow => Verdict::PassThrough { dest, decision },
        Action::Deny if policy.audit_only() => Verdict::PassThrough { dest, decision },
        Action::Deny => Verdict::Deny { dest, decision },
    }
}

#[cfg(test)]
mod tests {
    use egressd_config::{ConfigBuilder, Origin};

    use super::*;
    use crate::conn::classify::{ClientHello, HttpHead};

    fn policy(allow: &str) -> std::sync::Arc<Policy> {
        let mut b = ConfigBuilder::new();
        b.allow_list(allow, Origin::Flag("--allow-domains"))
            .unwrap();
        b.loopback_ports(&[8080], Origin::Flag("--loopback-ports"));
        b.build().unwrap().policy
    }

    fn tls(sni: Option<&str>) -> Classified {
        Classified::Tls(ClientHello {
            sni: sni.map(str::to_owned),
            alpn: vec![],
            ech: false,
        })
    }

    fn http(host: Option<HostName>) -> Classified {
        Classified::Http(HttpHead { host })
    }

    const FORGED: &str = "203.0.113.7:443";

    #[test]
    fn sni_decides_and_orig_ip_is_ignored() {
        let p = policy("github.com");
        let v = decide(&p, &tls(Some("api.github.com")), FORGED.parse().unwrap());
        let Verdict::PassThrough { dest, decision } = v else {
            panic!("{v:?}")
        };
        assert_eq!(dest.host, HostName::Name("api.github.com".into()));
        assert_eq!(dest.port, 443);
        assert!(decision.rule.is_some());

        let v = decide(
            &p,
            &tls(Some("evil.test")),
            "140.82.112.3:443".parse().unwrap(),
        );
        let Verdict::Deny { dest, decision } = v else {
            panic!("{v:?}")
        };
        assert_eq!(dest.host, HostName::Name("evil.test".into()));
        assert_eq!(decision.reason, Reason::NotAllowlisted);
    }

    #[test]
    fn tls_without_sni_is_decided_on_the_ip() {
        let p = policy("github.com,192.0.2.10");
        let v = decide(&p, &tls(None), FORGED.parse().unwrap());
        let Verdict::Deny { dest, decision } = v else {
            panic!("{v:?}")
        };
        assert_eq!(dest.host, HostName::Ip("203.0.113.7".parse().unwrap()));
        assert_eq!(decision.reason, Reason::IpLiteral);
        let v = decide(&p, &tls(None), "192.0.2.10:443".parse().unwrap());
        assert!(matches!(v, Verdict::PassThrough { .. }), "{v:?}");
    }

    #[test]
    fn http_host_decides_and_missing_host_is_denied() {
        let p = policy("example.com");
        let orig = "198.51.100.1:80".parse().unwrap();
        let ok = decide(
            &p,
            &http(Some(HostName::Name("www.example.com".into()))),
            orig,
        );
        assert!(matches!(ok, Verdict::PassThrough { .. }), "{ok:?}");
        let ip = decide(
            &p,
            &http(Some(HostName::Ip("198.51.100.1".parse().unwrap()))),
            orig,
        );
        assert!(matches!(ip, Verdict::Deny { .. }), "{ip:?}");
        let none = decide(&p, &http(None), orig);
        assert!(matches!(none, Verdict::Deny { .. }), "{none:?}");
    }

    #[test]
    fn loopback_is_allowed_only_on_listed_ports() {
        let p = policy("example.com");
        let ok = decide_loopback(&p, "127.0.0.1:8080".parse().unwrap());
        assert!(matches!(ok, Verdict::PassThrough { .. }), "{ok:?}");
        let no = decide_loopback(&p, "[::1]:22".parse().unwrap());
        assert!(matches!(no, Verdict::Deny { .. }), "{no:?}");
    }

    #[test]
    fn unspecified_destinations_are_loopback() {
        let p = policy("example.com");
        let ok = decide_loopback(&p, "0.0.0.0:8080".parse().unwrap());
        let Verdict::PassThrough { dest, .. } = &ok else {
            panic!("0.0.0.0:8080 should pass like 127.0.0.1:8080: {ok:?}");
        };
        assert_eq!(dest.host, HostName::Ip("127.0.0.1".parse().unwrap()));
        let no = decide_loopback(&p, "[::]:22".parse().unwrap());
        assert!(matches!(no, Verdict::Deny { .. }), "{no:?}");
    }

    /// A config with an `[[intercept]]` rule for `api.example.com`, after `lists` (flag
    /// entries) are added.
    fn intercepting(lists: impl FnOnce(&mut ConfigBuilder)) -> egressd_config::Config {
        let mut b = ConfigBuilder::new();
        lists(&mut b);
        b.toml_str(
            "[[credential]]\nname = \"k\"\nsource = \"env\"\nvar = \"K\"\n\n[[intercept]]\n\
             host = \"api.example.com\"\ncredential = \"k\"\nheader = \"api-key\"\n\
             format = \"{token}\"\n",
            std::path::Path::new("egressd.toml"),
        )
        .unwrap();
        b.build().unwrap()
    }

    #[test]
    fn decide_tls_intercepts_an_allowed_host_a_rule_names_when_interception_is_on() {
        let c = intercepting(|b| {
            b.allow_list("other.example.com", Origin::Flag("--allow-domains"))
                .unwrap();
        });
        let orig = FORGED.parse().unwrap();
        let on = Some(&c.intercepts);
        let v = decide_tls(&c.policy, on, &tls(Some("API.example.com.")), orig);
        let Verdict::Intercept { rules, dest, .. } = v else {
            panic!("{v:?}");
        };
        assert_eq!(rules.len(), 1);
        assert_eq!(dest.host, HostName::Name("api.example.com".into()));
        // No rule for the host, interception off, or no SNI: as `decide` says.
        let other = decide_tls(&c.policy, on, &tls(Some("other.example.com")), orig);
        assert!(matches!(other, Verdict::PassThrough { .. }), "{other:?}");
        let off = decide_tls(&c.policy, None, &tls(Some("api.example.com")), orig);
        assert!(matches!(off, Verdict::PassThrough { .. }), "{off:?}");
        let no_sni = decide_tls(&c.policy, on, &tls(None), orig);
        assert!(matches!(no_sni, Verdict::Deny { .. }), "{no_sni:?}");
    }

    #[test]
    fn decide_tls_never_intercepts_a_blocked_host() {
        // An [[intercept]] host is allowed by its rule; a block entry still wins.
        let c = intercepting(|b| {
            b.block_list("api.example.com", Origin::Flag("--block-domains"))
                .unwrap();
        });
        let on = Some(&c.intercepts);
        let orig = FORGED.parse().unwrap();
        let v = decide_tls(&c.policy, on, &tls(Some("api.example.com")), orig);
        assert!(matches!(v, Verdict::Deny { .. }), "{v:?}");
    }
}
