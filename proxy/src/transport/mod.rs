//! What every front end uses to reach an upstream and move bytes: the connector (policy's
//! address checks, resolution, loopback inside a sandbox's namespace), the relay (splice
//! or copy, half-close, idle timeout, byte counts) and the limits shared with hyper. Below
//! the pipeline (`conn`), interception and the api-proxy, which all import it and which it
//! imports none of.

pub(crate) mod connect;
pub(crate) mod ends;
pub(crate) mod limits;
pub(crate) mod relay;
pub(crate) mod sockmap;
pub(crate) mod splice;
