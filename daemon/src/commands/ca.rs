//! `egressd ca export`: print a running sandbox's interception CA certificate.

use anyhow::anyhow;

use crate::{Failure, cli::CaExportArgs, sandbox::trust};

/// Prints the CA certificate; exit 0, or 1 when there is none to print.
pub fn export(args: &CaExportArgs) -> Result<u8, Failure> {
    let running = trust::running_cas();
    let chosen = match &args.sandbox {
        Some(name) => running.iter().find(|(n, _)| n == name).ok_or_else(|| {
            anyhow!(
                "no running sandbox {name:?} intercepts TLS (running: {})",
                names(&running)
            )
        }),
        None => match running.as_slice() {
            [one] => Ok(one),
            [] => Err(anyhow!(
                "no running sandbox intercepts TLS: the CA exists only while an `egressd exec` \
                 with [[intercept]] rules runs"
            )),
            _ => Err(anyhow!(
                "several sandboxes intercept TLS; name one: {}",
                names(&running)
            )),
        },
    }
    .map_err(Failure::runtime)?;
    let pem = std::fs::read_to_string(&chosen.1)
        .map_err(|e| Failure::runtime(anyhow!("reading {}: {e}", chosen.1.display())))?;
    print!("{pem}");
    Ok(0)
}

fn names(running: &[(String, std::path::PathBuf)]) -> String {
    if running.is_empty() {
        return "none".to_owned();
    }
    running
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
