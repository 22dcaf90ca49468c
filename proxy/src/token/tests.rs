//! Broker tests: the cache state machine under paused time with a scripted source, then the
//! real wire protocols over HTTPS against the fakes of `egressd-tests` (real time, kept short).

pub(super) mod scripted;
mod wire;
