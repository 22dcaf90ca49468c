//! Parsers of the `egressd` binary crate, compiled here by path so the fuzz targets can reach
//! them without making the daemon a library. Both modules are self-contained (they use only
//! serde, serde_json and time); if one starts to depend on the rest of the daemon, move its
//! pure parsing into `egressd-config` instead.

#![allow(dead_code, reason = "only the parse functions are fuzzed")]

/// AWF's `--config` JSON (`daemon/src/commands/awf/config.rs`).
#[path = "../../daemon/src/commands/awf/config.rs"]
pub mod awf_config;

/// AWF's log lines (`daemon/src/awf_log.rs`), which the audit reader parses through.
#[path = "../../daemon/src/awf_log.rs"]
pub mod awf_log;

/// Audit and access log lines: egressd's JSONL, AWF's `audit.jsonl` and Squid `access.log`
/// (`daemon/src/commands/audit/read.rs`).
#[path = "../../daemon/src/commands/audit/read.rs"]
pub mod audit_read;
