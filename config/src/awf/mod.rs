//! AWF compatibility, config side: what `egressd awf` needs to know of AWF (GitHub's Agentic
//! Workflow Firewall) beyond the policy. The daemon's `commands/awf/` reads AWF's command
//! line and writes these; the proxy's `awf/` serves them.

pub mod apiproxy;
