//! Entra Agent ID: the two-hop exchange of an `entra-agent` credential (`reference/tokens.md` §3).
//!
//! * Hop 1: the agent identity **blueprint** exchanges the assertion credential's token (the
//!   GitHub JWT) for T1: `client_id=<blueprint>`, `scope=api://AzureADTokenExchange/.default`,
//!   `fmi_path=<agent identity client ID>`.
//! * Hop 2: the **agent identity** exchanges T1 for the resource token:
//!   `client_id=<agent>`, `scope=<resource>/.default`, `client_assertion=T1`.
//!
//! Each hop is an [`Entra`] exchange with its own cache slot, keyed as §7.3 says, so T1 and
//! the resource token are cached and refreshed on their own `expires_in`. The T1 slot is
//! internal: it has no name of its own and `Broker::get` does not hand it out. When hop 2
//! answers AADSTS700024 (T1 expired), the T1 slot is re-minted and hop 2 tried once more.

use std::sync::Arc;

use egressd_config::credential::EntraAgentSource;

use super::Source;
use super::entra::Entra;
use crate::token::Slot;

/// The `source` label of tokens from an `entra-agent` credential.
pub(crate) const LABEL: &str = "entra-agent";

/// Hop 1: the blueprint gets T1 for the agent, asserted by `assertion`'s token.
///
/// # Errors
///
/// The token URL built from the authority and tenant does not parse.
pub(crate) fn blueprint_hop(
    config: &EntraAgentSource,
    assertion: Arc<Slot>,
) -> Result<Source, String> {
    Entra::new(
        LABEL,
        &config.authority,
        &config.tenant,
        &config.blueprint_client_id,
        &config.exchange_scope,
        Some(&config.agent_client_id),
        assertion,
    )
    .map(Source::Entra)
}

/// Hop 2: the agent identity exchanges T1 (the token of slot `t1`) for the resource token.
///
/// # Errors
///
/// As [`blueprint_hop`].
pub(crate) fn agent_hop(config: &EntraAgentSource, t1: Arc<Slot>) -> Result<Source, String> {
    Entra::new(
        LABEL,
        &config.authority,
        &config.tenant,
        &config.agent_client_id,
        &config.scope,
        None,
        t1,
    )
    .map(Source::Entra)
}
