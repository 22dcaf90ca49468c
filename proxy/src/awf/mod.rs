//! AWF compatibility, proxy side: the api-proxy sidecar egressd stands in for
//! (`apiproxy`, with its budgets, rate limits and token-usage tracking). AWF's log formats
//! (`access.log`, `audit.jsonl`, `token-usage.jsonl`) are renderings of audit records and
//! are written by the audit log (`audit/awf.rs`); the daemon's `commands/awf/` holds the
//! command line and the log readers.

pub(crate) mod apiproxy;
