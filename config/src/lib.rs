//! egressd configuration: the TOML file, the allowlist [`Policy`] and their validation.
//!
//! A [`ConfigBuilder`] collects sources in the order the daemon gives them (command-line
//! lists, allow files, TOML files) and [`ConfigBuilder::build`] turns them into a validated
//! [`Config`], reporting every problem at once with the place it comes from
//! (`path:line:column` for files, the flag name for flags).
//!
//! The [`Policy`] inside a [`Config`] is the compiled allowlist: immutable, `Send + Sync`,
//! shared through an [`Arc`](std::sync::Arc), and [`Policy::decide`] is a pure function that
//! does not allocate. Its domain syntax and matching are those of AWF (see
//! `shared/reference/awf.md` §3): `github.com` covers the apex and all subdomains,
//! `*.github.com` only subdomains, `https://`/`http://` restrict the scheme, entries with a
//! port or a path are accepted but never match.
//!
//! # What this crate never does
//!
//! * no network I/O and no DNS resolution;
//! * no reads of environment variables (the daemon hands everything in explicitly);
//! * no file I/O beyond reading the files it is asked to read
//!   ([`ConfigBuilder::toml_file`], [`ConfigBuilder::allow_file`]).
//!
//! # Loopback
//!
//! AWF's `localhost` keyword is not supported: it is rejected with an error. Loopback
//! destinations are allowed per port with `loopback_ports = [...]` in the TOML file (or
//! [`ConfigBuilder::loopback_ports`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::pedantic)]
#![allow(
    clippy::must_use_candidate,
    reason = "plain getters and constructors; #[must_use] on each adds noise"
)]

mod addr;
mod auth_scheme;
mod authority;
pub mod awf;
mod builder;
pub mod copilot;
pub mod credential;
pub mod defaults;
mod duration;
mod error;
pub mod file;
pub mod github;
pub mod intercept;
mod policy;
pub mod provenance;
pub mod sandbox;
pub mod spiffe;

pub use builder::{Config, ConfigBuilder, DnsDenied, Limits, ResolveOverride, Timeouts};
pub use credential::{Credential, CredentialSource};
pub use error::{EntryError, Error, ErrorKind, Location};
pub use intercept::{InterceptRule, Intercepts};
pub use policy::{
    Action, Decision, Entry, List, Origin, Pattern, Policy, Reach, Reason, Scheme, SchemeFilter,
    Target, TargetHost,
};
