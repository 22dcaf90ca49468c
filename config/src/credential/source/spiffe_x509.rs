//! `source = "spiffe-x509"`: an X.509-SVID from the SPIFFE Workload API, kept current as it
//! rotates. Not a token: `[[intercept]]` rules present it as their client certificate.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::SourceTable;
use crate::credential::CredentialSource;
use crate::credential::check::Checker;
use crate::spiffe::{SpiffeId, WorkloadEndpoint};

/// `spiffe-x509`: the variable that names the Workload API when `socket` is not set.
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// `source = "spiffe-x509"`: X.509-SVIDs and trust bundles streamed by the SPIFFE Workload API
/// (`FetchX509SVID`), kept current as they rotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeX509Source {
    /// The Workload API; `None` for the daemon's `SPIFFE_ENDPOINT_SOCKET`.
    pub socket: Option<WorkloadEndpoint>,
    /// The SVID to present; `None` for the first one offered (the default identity).
    pub spiffe_id: Option<SpiffeId>,
}

/// The table's keys besides `name`, `source` and `refresh_margin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    socket: Option<Spanned<String>>,
    spiffe_id: Option<Spanned<String>>,
}

impl SourceTable for Table {
    const NAME: &'static str = "spiffe-x509";

    fn into_source(self, check: &mut Checker<'_>, _dir: &Path) -> CredentialSource {
        let socket = self.socket.as_ref().and_then(|s| {
            WorkloadEndpoint::parse(s.get_ref())
                .map_err(|why| check.fail(s.span().start, format!("`socket`: {why}")))
                .ok()
        });
        let spiffe_id = self.spiffe_id.as_ref().and_then(|s| {
            SpiffeId::parse(s.get_ref())
                .map_err(|why| check.fail(s.span().start, format!("`spiffe_id`: {why}")))
                .ok()
        });
        CredentialSource::SpiffeX509(SpiffeX509Source { socket, spiffe_id })
    }
}
