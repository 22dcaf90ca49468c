//! egressd end-to-end tests: the real `egressd` binary, the real kernel, real namespaces.
//!
//! One test binary; each topic is a module. Privileged tests call `privileged()` first (skip
//! on a developer machine, fail under `cargo xtask test`). Run them with
//! `cargo xtask test -p egressd-tests` (add `-- core::` to pick a topic).
//!
//! All traffic stays on this machine (`shared/TOOLCHAIN.md`): sandboxed clients dial TEST-NET
//! addresses inside egressd's fresh netns, which has no route out, and the proxy reaches the
//! fake upstreams in a namespace the test made, through `--resolve`.

mod audit;
mod awf;
mod bypass;
mod cli;
mod copilot;
mod copilot_cli;
mod core;
mod coverage;
mod daemon;
mod dns;
mod doors;
mod faults;
mod fixtures;
mod github;
mod intercept;
mod isolation;
mod kubernetes;
mod leaks;
mod limits;
mod namespaces;
mod nftables;
mod otlp;
mod provenance;
mod resolve;
mod sdks;
mod spiffe;
mod transfer;
mod udp;

use egressd_tests::Output;
use serde_json::Value;

/// The audit record for `name` with `decision`; fails with the whole run's output if absent.
#[track_caller]
fn audit_record(out: &Output, name: &str, decision: &str) -> Value {
    out.audit_for(name)
        .into_iter()
        .find(|r| r["decision"] == decision)
        .unwrap_or_else(|| {
            panic!("no audit record with name {name:?} and decision {decision:?}\n{out}")
        })
}

/// A JSON value as plain text: strings without quotes, numbers as digits, null as "".
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The probe's JSON line for `action`; fails with the run's output if absent.
#[track_caller]
fn probe_line(out: &Output, action: &str) -> Value {
    out.json_lines()
        .into_iter()
        .find(|l| l["action"] == action)
        .unwrap_or_else(|| panic!("egressd-probe printed no {action:?} line\n{out}"))
}
