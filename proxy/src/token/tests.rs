//! Broker tests: the cache state machine under paused time with a scripted source, then the
//! real wire protocols over HTTPS against the fakes of `egressd-tests` (real time, kept short):
//! `wire.rs` for GitHub OIDC and Entra, `exchange.rs` for Google STS and AWS STS.

mod exchange;
pub(super) mod scripted;
mod wire;
