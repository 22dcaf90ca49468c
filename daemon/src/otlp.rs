//! `--otlp-*`: starts the audit log's OTLP export (`egressd_proxy::OtlpExport`) from the
//! flags and the environment (`EGRESSD_OTLP_HEADERS`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_SERVICE_NAME`), on a thread without capabilities.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use egressd_proxy::{AuditLog, OtlpConfig, OtlpExport, OtlpProtocol};

use crate::cli::{OtlpArgs, OtlpProtocolArg};

/// How long one export request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the end of a run waits for the queued records to go out.
pub const FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

/// Starts the export `args` ask for and sets it on `audit`; nothing without
/// `--otlp-endpoint`.
///
/// # Errors
///
/// A header is not `NAME=VALUE`, the CA file cannot be read, or the endpoint is not usable.
pub fn start(
    args: &OtlpArgs,
    audit: &AuditLog,
    provenance: Option<&egressd_proxy::token::Provenance>,
) -> anyhow::Result<()> {
    let Some(endpoint) = &args.endpoint else {
        return Ok(());
    };
    let [env_headers, resource_attributes, service_name] = crate::env::otlp_env();
    let mut headers = Vec::new();
    for header in &args.headers {
        // The text is not echoed: it may hold a key.
        headers.push(header_pair(header).context("--otlp-header")?);
    }
    if let Some(list) = env_headers {
        for (name, value) in egressd_proxy::parse_otel_list(&list) {
            headers.push((name, value));
        }
    }
    let ca_pem = args
        .ca
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading --otlp-ca {}", p.display())))
        .transpose()?;
    let config = OtlpConfig {
        endpoint: endpoint.clone(),
        protocol: match args.protocol {
            OtlpProtocolArg::Grpc => OtlpProtocol::Grpc,
            OtlpProtocolArg::HttpProtobuf => OtlpProtocol::HttpProtobuf,
        },
        headers,
        ca_pem,
        queue: args.queue,
        timeout: REQUEST_TIMEOUT,
        host: egressd_proxy::host_name(),
        resource_attributes,
        service_name,
    };
    let drop_capabilities: Box<dyn FnOnce() -> Result<(), String> + Send> =
        Box::new(|| crate::sandbox::privilege::drop_to(&[]).map_err(|e| format!("{e:#}")));
    let export = OtlpExport::start(&config, provenance, drop_capabilities)
        .map_err(|e| anyhow!(e))
        .context("--otlp-endpoint")?;
    audit.export_to(export);
    Ok(())
}

/// Finishes the export of the audit log it holds when dropped (a run that ends early).
pub struct FlushOnDrop(pub std::sync::Arc<AuditLog>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.0.finish_export(FLUSH_AT_EXIT);
    }
}

/// `NAME=VALUE`.
fn header_pair(text: &str) -> anyhow::Result<(String, String)> {
    let Some((name, value)) = text.split_once('=') else {
        bail!("expected NAME=VALUE");
    };
    if name.trim().is_empty() {
        bail!("the header name is empty");
    }
    Ok((name.trim().to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_name_value_pairs() {
        assert_eq!(
            header_pair("authorization=Bearer a=b").unwrap(),
            ("authorization".to_owned(), "Bearer a=b".to_owned())
        );
        assert!(header_pair("novalue").is_err());
        assert!(header_pair("=v").is_err());
    }
}
