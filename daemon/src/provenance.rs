//! The run's provenance for `exec`: who triggered it, from the job's verified GitHub OIDC
//! token (`[provenance]`; the verification is `token/provenance.rs` in the proxy crate).

use anyhow::{Context as _, anyhow};
use egressd_proxy::token::ProvenanceStatus;

use crate::{Failure, env};

/// The run's provenance (`[provenance]`, `token/provenance.rs` in the proxy crate): when the
/// job can mint GitHub OIDC tokens, one is minted for the provenance audience and verified
/// against the deployment's issuer. A failure is a warning on stderr (records then say
/// provenance is absent), or refuses the run (exit 125) with `required = true`.
pub fn establish(config: &egressd_config::Config) -> Result<ProvenanceStatus, Failure> {
    let settings = &config.provenance;
    let absent = |why: String| {
        if settings.required {
            return Err(Failure::setup(anyhow!(
                "[provenance] required = true, but this run has no verified provenance: {why}"
            )));
        }
        Ok(ProvenanceStatus::Absent(why))
    };
    let Some(oidc) = env::token_source_env(config).github_oidc else {
        return absent(
            "the job cannot mint GitHub OIDC tokens (ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN are \
             not set: give it `permissions: id-token: write`)"
                .to_owned(),
        );
    };
    let expected = egressd_proxy::token::provenance::Expected {
        issuer: settings.expected_issuer(config.github.as_ref()),
        audience: settings.audience.clone(),
    };
    let extra_ca = match &config.upstream_ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading the upstream CA {}", path.display()))
                .map_err(Failure::usage)?,
        ),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(Failure::setup)?;
    // Built inside the runtime: the resolver for `--dns-server` needs one.
    let established = runtime.block_on(async {
        let dns = egressd_proxy::token::OwnDns::from_config(config)
            .context("building the DNS resolver for the issuer")
            .map_err(Failure::setup)?;
        Ok::<_, Failure>(
            egressd_proxy::token::provenance::establish(&oidc, &expected, extra_ca.as_deref(), dns)
                .await,
        )
    })?;
    match established {
        Ok(provenance) => {
            tracing::info!(
                actor = provenance.actor,
                actor_id = provenance.actor_id,
                repository = provenance.repository,
                run_id = provenance.run_id,
                "provenance verified"
            );
            Ok(ProvenanceStatus::Verified(Box::new(provenance)))
        }
        Err(e) => {
            if !settings.required {
                eprintln!(
                    "egressd: warning: NO PROVENANCE for this run: {e}; audit records say \
                     provenance is absent and per-actor credentials are refused (403)"
                );
            }
            absent(e.to_string())
        }
    }
}
