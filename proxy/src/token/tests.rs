//! Broker tests: the cache state machine under paused time with a scripted source, then the
//! real wire protocols over HTTPS against the fakes of `egressd-tests` (real time, kept short):
//! `wire.rs` for GitHub OIDC and Entra, `exchange.rs` for Google STS and AWS STS,
//! `copilot.rs` for the Copilot exchange and its fallback,
//! `provenance.rs` for verifying the run's OIDC token and per-actor selection.

mod copilot;
mod exchange;
mod provenance;
pub(super) mod scripted;
mod wire;
