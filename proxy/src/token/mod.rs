//! The token broker: mints, caches and refreshes the credentials the proxy injects.
//!
//! A [`Broker`] is built once from the configuration's `[[credential]]` tables
//! ([`egressd_config::Credential`]) and what the daemon read from its own environment
//! ([`SourceEnv`]). [`Broker::get`] hands out a [`Token`] for a credential name:
//!
//! ```text
//!  get(name) ─► slot (one per cache key, reference/tokens.md §7.3)
//!                 │ cached and fresh ─────────────► token
//!                 │ past its refresh point ───────► token, plus one background refresh
//!                 │ mint in flight ───────────────► wait for it (shared result)
//!                 │ backing off after a failure ──► the last error, at once
//!                 └ otherwise ────────────────────► spawn one mint, wait for it
//!  mint ─► source (source/*.rs) ─► TokenHttp (http.rs) ─► token endpoint
//!            entra: client_assertion = the assertion credential's token
//!            oauth2-token-exchange: subject_token = ..., aws-web-identity:
//!                   WebIdentityToken = ... (GitHub OIDC: minted fresh for every exchange,
//!                   never cached for it)
//! ```
//!
//! The refresh policy (refresh point, hard guard, jitter, backoff) is in `cache.rs`; the
//! wire protocols are in `source/`. Sources: `github-oidc`, `entra`, `entra-agent` (two
//! chained Entra hops), `oauth2-token-exchange` (Google STS, optionally impersonating a
//! service account), `aws-web-identity` (temporary AWS keys, [`Token::aws`]), `copilot` (the
//! GitHub token or the Copilot v2 exchange, [`Token::scheme`]), `env`, `file`,
//! `per-actor` (the triggering user's own secret, chosen once per run by the verified
//! `actor_id` of the run's [`Provenance`], which `provenance.rs` establishes).
//!
//! `spiffe-x509` credentials are not tokens: the broker starts one `X509Source` per such
//! credential (`crate::spiffe`, which follows the Workload API's stream) and hands it to the
//! interception code, which presents its SVID on upstream connections. [`Broker::get`] does
//! not serve them.
//!
//! # What this module does not do
//!
//! * It reads no environment variable: the daemon passes the GitHub OIDC variables and the
//!   values of `source = "env"` variables in a [`SourceEnv`].
//! * It does not inject tokens into requests; the interception code calls [`Broker::get`] per
//!   request and puts [`Token::bearer`] in the rule's header, or signs the request with
//!   [`Token::aws`] (SigV4, `intercept/sigv4.rs`).
//!
//! # Security
//!
//! Tokens, keys and the GitHub request token are [`Secret`]s: their `Debug` and `Display`
//! print `[redacted]`, and they never appear in errors, logs or cache keys (which hash the
//! request token). Token endpoints are reached over rustls with the webpki roots plus the
//! configured `upstream_ca`; verification cannot be disabled. A token with less than the
//! hard guard (`min(60 s, lifetime/4)`) left is never handed out.

mod cache;
mod dns;
mod error;
mod http;
pub mod provenance;
mod secret;
mod source;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use egressd_config::{Config, Credential, CredentialSource};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub use self::dns::OwnDns;
pub use self::error::{BrokerError, TokenError, TokenErrorKind};
pub use self::secret::Secret;
pub use self::source::aws_web_identity::AwsCredentials;
pub use self::source::github_oidc::GithubOidcEnv;
pub use self::source::per_actor::table_vars as per_actor_vars;
pub use crate::provenance::{Provenance, ProvenanceStatus};

use self::cache::{Entry, Lookup, MintResult, State};
use self::error::{MintError, Retry};
use self::http::TokenHttp;
use self::source::anthropic_wif::AnthropicWif;
use self::source::aws_web_identity::AwsWebIdentity;
use self::source::copilot::Copilot;
use self::source::entra::Entra;
use self::source::github_oidc::GithubOidc;
use self::source::static_secret::Static;
use self::source::token_exchange::TokenExchange;
use self::source::{Source, entra_agent};

/// A credential's token, ready to inject: a bearer token, or AWS keys that sign.
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer token (`Debug` prints `[redacted]`). Empty when the credential signs requests
    /// instead of bearing a token (`aws-web-identity`, see [`aws`](Self::aws)): read it through
    /// [`bearer`](Self::bearer), which says so.
    pub secret: Secret,
    /// `aws-web-identity`: the temporary keys that sign the request with SigV4; they are never
    /// a header value on their own. `None` for every other source.
    pub aws: Option<AwsCredentials>,
    /// How long it remains valid from now; at least the hard guard for minted tokens,
    /// [`Duration::MAX`] for static secrets (`env`, `file`), which do not expire.
    pub expires_in: Duration,
    /// The `source` of the credential: `github-oidc`, `entra`, `entra-agent`,
    /// `oauth2-token-exchange`, `aws-web-identity`, `env`, `file`, `copilot` (an exchanged
    /// Copilot token) or `copilot-direct` (the GitHub token itself).
    pub source: &'static str,
    /// The `Authorization` scheme the source chose for this token, for rule formats that say
    /// `{scheme}` (`copilot` credentials); `None` leaves it to the request's host
    /// ([`AuthScheme::for_host`](egressd_config::intercept::AuthScheme::for_host)).
    pub scheme: Option<egressd_config::intercept::AuthScheme>,
}

impl Token {
    /// Adds the headers a request carrying this token needs besides the token itself:
    /// `anthropic-wif` tokens need the oauth beta in `anthropic-beta`.
    pub(crate) fn add_required_headers(&self, headers: &mut hyper::HeaderMap) {
        if self.source == source::anthropic_wif::LABEL {
            source::anthropic_wif::add_oauth_beta(headers);
        }
    }

    /// The bearer token to put in a header, or `None` for AWS keys ([`aws`](Self::aws)), which
    /// must sign the request instead.
    pub fn bearer(&self) -> Option<&Secret> {
        self.aws.is_none().then_some(&self.secret)
    }
}

/// What the daemon read from its own environment for the token sources.
#[derive(Debug, Clone, Default)]
pub struct SourceEnv {
    /// `ACTIONS_ID_TOKEN_REQUEST_URL` and `_TOKEN`, when the job may mint OIDC tokens.
    pub github_oidc: Option<GithubOidcEnv>,
    /// The variables named by `source = "env"` credentials, by name.
    pub vars: HashMap<String, Secret>,
    /// `SPIFFE_ENDPOINT_SOCKET`: the Workload API of `spiffe-x509` credentials that do not
    /// name a `socket`.
    pub spiffe_endpoint_socket: Option<String>,
}

/// Knobs of a [`Broker`]; [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Extra CA certificates (PEM) trusted for token endpoints, besides the webpki roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Deadline of one token request (connect, TLS, request, response).
    pub request_timeout: Duration,
    /// Attempts of a mint that a `get` waits for, on retryable failures (at least 1).
    pub attempts: u32,
    /// First delay after a failure; it doubles per failure.
    pub backoff_min: Duration,
    /// The longest delay after failures.
    pub backoff_max: Duration,
    /// The run's verified provenance: selects `per-actor` credentials (none: they answer
    /// `Forbidden`).
    pub provenance: Option<Provenance>,
    /// How token endpoints' names are resolved (`--resolve`, `--dns-server`, else the system).
    pub dns: OwnDns,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            extra_ca_pem: None,
            request_timeout: Duration::from_secs(10),
            attempts: 3,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            provenance: None,
            dns: OwnDns::default(),
        }
    }
}

/// Mints, caches and refreshes credentials; cheap to clone (shared state).
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        f.debug_struct("Broker")
            .field("credentials", &names)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// The broker for `config.credentials`, trusting `config.upstream_ca` besides the webpki
    /// roots for token endpoints.
    ///
    /// # Errors
    ///
    /// As [`with_options`](Self::with_options); also [`BrokerError::UpstreamCa`] when the CA
    /// file cannot be read.
    pub fn new(config: &Config, env: SourceEnv) -> Result<Self, BrokerError> {
        Self::with_provenance(config, env, None)
    }

    /// As [`new`](Self::new), with the run's verified provenance for `per-actor` credentials.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_provenance(
        config: &Config,
        env: SourceEnv,
        provenance: Option<Provenance>,
    ) -> Result<Self, BrokerError> {
        let extra_ca_pem = match &config.upstream_ca {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| BrokerError::UpstreamCa {
                path: path.clone(),
                why: format!("cannot read it: {e}"),
            })?),
        };
        let dns = OwnDns::from_config(config).map_err(|e| BrokerError::Dns(e.to_string()))?;
        let options = BrokerOptions {
            extra_ca_pem,
            provenance,
            dns,
            ..BrokerOptions::default()
        };
        Self::with_options(&config.credentials, env, options)
    }

    /// The broker for `credentials`, with explicit options.
    ///
    /// Everything that can be checked before the first request is checked here: the GitHub
    /// OIDC variables are present when a `github-oidc` credential exists, `env` variables
    /// exist, `file` secrets are readable by their owner only, URLs parse.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Credential`] naming the credential and the fix;
    /// [`BrokerError::UpstreamCa`] for unusable extra CA certificates.
    pub fn with_options(
        credentials: &[Credential],
        env: SourceEnv,
        options: BrokerOptions,
    ) -> Result<Self, BrokerError> {
        let http = TokenHttp::new(options.extra_ca_pem.as_deref(), options.request_timeout)
            .map_err(|why| BrokerError::UpstreamCa {
                path: std::path::PathBuf::new(),
                why,
            })?
            .with_dns(options.dns.clone());
        let mut build = Build {
            credentials: credentials.iter().map(|c| (c.name.as_str(), c)).collect(),
            env: &env,
            by_key: HashMap::new(),
            named: HashMap::new(),
            building: Vec::new(),
            provenance: options.provenance.as_ref(),
        };
        let mut x509 = HashMap::new();
        for credential in credentials {
            if let CredentialSource::SpiffeX509(spiffe) = &credential.source {
                let source = x509_source(&credential.name, spiffe, &env)?;
                x509.insert(credential.name.clone(), source);
            } else {
                build.slot(&credential.name)?;
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                named: build.named,
                x509,
                http,
                attempts: options.attempts.max(1),
                backoff_min: options.backoff_min,
                backoff_max: options.backoff_max,
            }),
        })
    }

    /// A token for credential `name`: the cached one while it is fresh, otherwise one minted
    /// now (shared with every concurrent caller for the same credential).
    ///
    /// # Errors
    ///
    /// A [`TokenError`] whose message is safe to show the agent: unknown credential, token
    /// endpoint unreachable or refusing, or still backing off after such a failure. Never a
    /// token with less than the hard guard left.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. The mint runs in its own task: dropping this future (a client that went
    /// away) does not cancel it, and the other callers waiting for it, and the cache, still
    /// get its result.
    pub async fn get(&self, name: &str) -> Result<Token, TokenError> {
        let slot = self
            .inner
            .named
            .get(name)
            .ok_or_else(|| TokenError::unknown(name))?;
        self.inner.get(slot).await.map_err(|mut e| {
            name.clone_into(&mut e.credential);
            e
        })
    }

    /// Forgets the cached token of `name`, so the next [`get`](Self::get) mints a new one
    /// (for an upstream that answered 401 to it). Static secrets are not affected.
    pub fn invalidate(&self, name: &str) {
        if let Some(slot) = self.inner.named.get(name) {
            match &slot.source {
                Source::PerActor(Ok(selected)) => selected.lock().invalidate(),
                _ => slot.lock().invalidate(),
            }
        }
    }

    /// The cache keys of every slot, for tests that check they hold no secret.
    #[cfg(test)]
    fn cache_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.inner.named.values().map(|s| s.key.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The configured credential names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.named.keys().map(String::as_str)
    }

    /// The SVID source of `spiffe-x509` credential `name`.
    pub(crate) fn x509(&self, name: &str) -> Option<&crate::spiffe::X509Source> {
        self.inner.x509.get(name)
    }
}

/// Starts following the Workload API for a `spiffe-x509` credential: its `socket`, else the
/// daemon's `SPIFFE_ENDPOINT_SOCKET`.
fn x509_source(
    name: &str,
    spiffe: &egressd_config::credential::SpiffeX509Source,
    env: &SourceEnv,
) -> Result<crate::spiffe::X509Source, BrokerError> {
    use egressd_config::credential::SPIFFE_ENDPOINT_SOCKET;
    use egressd_config::spiffe::WorkloadEndpoint;
    let fail = |why: String| BrokerError::Credential {
        name: name.to_owned(),
        why,
    };
    let endpoint = match (&spiffe.socket, &env.spiffe_endpoint_socket) {
        (Some(socket), _) => socket.clone(),
        (None, Some(var)) => WorkloadEndpoint::parse(var)
            .map_err(|why| fail(format!("{SPIFFE_ENDPOINT_SOCKET}: {why}")))?,
        (None, None) => {
            return Err(fail(format!(
                "no Workload API: set `socket` (unix:///path/to/agent.sock) or                  {SPIFFE_ENDPOINT_SOCKET} in egressd's environment"
            )));
        }
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(fail(
            "the broker must be built inside a tokio runtime to follow the Workload API".into(),
        ));
    }
    Ok(crate::spiffe::X509Source::start(
        name,
        endpoint,
        spiffe.spiffe_id.clone(),
    ))
}

// === internals ===

/// The broker's shared state.
struct Inner {
    /// Slots by credential name (several names may share a slot with the same cache key).
    named: HashMap<String, Arc<Slot>>,
    /// The SVID sources of `spiffe-x509` credentials, by name.
    x509: HashMap<String, crate::spiffe::X509Source>,
    http: TokenHttp,
    attempts: u32,
    backoff_min: Duration,
    backoff_max: Duration,
}

/// One cache slot: a source, its policy and its state.
struct Slot {
    /// The credential it was built for (an internal name for an Agent ID blueprint hop).
    name: String,
    /// The cache key (`reference/tokens.md` §7.3); never a raw secret.
    key: String,
    source: Source,
    margin: Option<Duration>,
    state: Mutex<State>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent between statements; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// [`Broker::get`] for one slot.
    async fn get(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<Token, TokenError> {
        // A per-actor credential is its user's slot (never itself per-actor), chosen at build.
        let slot = match &slot.source {
            Source::PerActor(selected) => selected.as_ref().map_err(Clone::clone)?,
            _ => slot,
        };
        if let Source::Copilot(copilot) = &slot.source
            && copilot.is_direct()
        {
            return copilot.direct(self).await.map_err(|mut e| {
                slot.name.clone_into(&mut e.credential);
                e
            });
        }
        if let Source::Static(secret) = &slot.source {
            return Ok(Token {
                scheme: None,
                secret: secret.secret().clone(),
                aws: None,
                expires_in: Duration::MAX,
                source: secret.label(),
            });
        }
        let lookup = slot.lock().lookup(Instant::now());
        let mut rx = match lookup {
            Lookup::Serve(entry, refresh) => {
                if let Some(tx) = refresh {
                    self.spawn_mint(slot, tx, 1);
                }
                return Ok(token(&entry, slot, Instant::now()));
            }
            Lookup::Fail(error) => return Err(error),
            Lookup::Wait(rx) => rx,
            Lookup::Mint(tx, rx) => {
                self.spawn_mint(slot, tx, self.attempts);
                rx
            }
        };
        let result = match rx.wait_for(Option::is_some).await {
            Ok(result) => result.clone(),
            Err(_) => None,
        };
        match result {
            Some(Ok(entry)) => Ok(token(&entry, slot, Instant::now())),
            Some(Err(error)) => Err(error),
            None => Err(MintError::unavailable("the token request was interrupted")
                .for_credential(&slot.name)),
        }
    }

    /// The client assertion from `slot`: a fresh mint for GitHub OIDC (a JWT per exchange),
    /// otherwise the slot's cached token (a new one when `fresh`).
    fn assertion<'a>(
        self: &'a Arc<Self>,
        slot: &'a Arc<Slot>,
        fresh: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Secret, TokenError>> + Send + 'a>> {
        // Boxed: an Entra mint awaits another slot's mint, a recursive future type.
        Box::pin(async move {
            if let Source::GithubOidc(oidc) = &slot.source {
                return oidc
                    .mint(&self.http)
                    .await
                    .map(|minted| minted.secret)
                    .map_err(|e| e.for_credential(&slot.name));
            }
            if fresh {
                slot.lock().invalidate();
            }
            self.get(slot).await.map(|token| token.secret)
        })
    }

    /// Runs one mint of `slot` in its own task (up to `attempts` tries on retryable
    /// failures), records the result in the slot, then publishes it on `tx`.
    fn spawn_mint(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        tx: tokio::sync::watch::Sender<Option<MintResult>>,
        attempts: u32,
    ) {
        let (inner, slot) = (Arc::clone(self), Arc::clone(slot));
        tokio::spawn(async move {
            let mut attempt = 1;
            let minted = loop {
                match slot.source.mint(&inner).await {
                    Err(MintError {
                        retry: Retry::Backoff(after),
                        ..
                    }) if attempt < attempts => {
                        let delay = inner.backoff(attempt, after);
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    result => break result,
                }
            };
            let now = Instant::now();
            let result = match minted {
                Ok(minted) => {
                    let plan = match &slot.source {
                        Source::AwsWebIdentity(_) => {
                            cache::plan_aws(minted.ttl, slot.margin, cache::jitter())
                        }
                        _ => {
                            cache::plan(minted.ttl, slot.margin, minted.refresh_in, cache::jitter())
                        }
                    };
                    tracing::debug!(
                        credential = slot.name,
                        source = slot.source.label(),
                        key = slot.key,
                        expires_in = minted.ttl.as_secs(),
                        refresh_after = plan.refresh_after.as_secs(),
                        "minted a token"
                    );
                    let mut entry = Entry::new(minted.secret, minted.sent, minted.ttl, plan);
                    entry.aws = minted.aws;
                    let result = Ok(entry);
                    slot.lock().complete(&result, now, Duration::ZERO);
                    result
                }
                Err(error) => {
                    let after = match error.retry {
                        Retry::Backoff(after) => after,
                        Retry::Never | Retry::Remint => None,
                    };
                    let error = error.for_credential(&slot.name);
                    tracing::warn!(
                        credential = slot.name,
                        retryable = error.retryable,
                        error = error.message,
                        "minting a token failed"
                    );
                    let mut state = slot.lock();
                    let failures = state.fail();
                    let result = Err(error);
                    state.complete(&result, now, inner.backoff(failures, after));
                    result
                }
            };
            tx.send_replace(Some(result));
        });
    }

    fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        cache::backoff(
            failures,
            self.backoff_min,
            self.backoff_max,
            retry_after,
            cache::jitter(),
        )
    }
}

/// The [`Token`] of a cached entry at `now`.
fn token(entry: &Entry, slot: &Slot, now: Instant) -> Token {
    Token {
        scheme: slot.source.scheme_for(&entry.secret),
        secret: entry.secret.clone(),
        aws: entry.aws.clone(),
        expires_in: entry.expires_at.saturating_duration_since(now),
        source: slot.source.label(),
    }
}

/// A short, non-reversible fingerprint of a secret for cache keys.
pub(crate) fn hash_secret(secret: &Secret) -> String {
    let digest = Sha256::digest(secret.expose().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the slots of a broker, assertion credentials first.
struct Build<'a> {
    credentials: HashMap<&'a str, &'a Credential>,
    env: &'a SourceEnv,
    by_key: HashMap<String, Arc<Slot>>,
    named: HashMap<String, Arc<Slot>>,
    /// The credentials being built, to refuse loops (the config crate refuses them too).
    building: Vec<String>,
    /// The run's verified provenance, for `per-actor` credentials.
    provenance: Option<&'a Provenance>,
}

impl Build<'_> {
    fn slot(&mut self, name: &str) -> Result<Arc<Slot>, BrokerError> {
        if let Some(slot) = self.named.get(name) {
            return Ok(Arc::clone(slot));
        }
        let fail = |why: String| BrokerError::Credential {
            name: name.to_owned(),
            why,
        };
        if self.building.iter().any(|n| n == name) {
            return Err(fail("its assertions loop back to it".to_owned()));
        }
        let Some(&credential) = self.credentials.get(name) else {
            return Err(fail("no credential of that name is configured".to_owned()));
        };
        self.building.push(name.to_owned());
        let source = match &credential.source {
            CredentialSource::GithubOidc { audience } => {
                let env = self.env.github_oidc.as_ref().ok_or_else(|| {
                    fail(
                        "ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are \
                         not set: give the job `permissions: id-token: write`"
                            .to_owned(),
                    )
                })?;
                Source::GithubOidc(GithubOidc::new(env, audience.as_deref()).map_err(fail)?)
            }
            CredentialSource::Entra(entra) => {
                let assertion = self.slot(&entra.assertion)?;
                let source = Entra::new(
                    "entra",
                    &entra.authority,
                    &entra.tenant,
                    &entra.client_id,
                    &entra.scope,
                    None,
                    assertion,
                );
                Source::Entra(source.map_err(fail)?)
            }
            CredentialSource::EntraAgent(agent) => {
                let assertion = self.slot(&agent.assertion)?;
                let hop1 = entra_agent::blueprint_hop(agent, assertion).map_err(fail)?;
                let t1 = self.intern(&format!("{name} (blueprint hop)"), hop1, None);
                entra_agent::agent_hop(agent, t1).map_err(fail)?
            }
            CredentialSource::TokenExchange(exchange) => {
                let subject = self.presented(&exchange.subject_token)?;
                Source::TokenExchange(TokenExchange::new(exchange, subject).map_err(fail)?)
            }
            CredentialSource::AnthropicWif(wif) => {
                let assertion = self.presented(&wif.assertion)?;
                Source::AnthropicWif(AnthropicWif::new(wif, assertion).map_err(fail)?)
            }
            CredentialSource::AwsWebIdentity(aws) => {
                let web_identity = self.presented(&aws.web_identity_token)?;
                Source::AwsWebIdentity(AwsWebIdentity::new(aws, web_identity).map_err(fail)?)
            }
            CredentialSource::Env { var } => {
                Source::Static(Static::env(var, &self.env.vars).map_err(fail)?)
            }
            CredentialSource::Copilot(copilot) => {
                let github = self.presented(&copilot.github_token)?;
                Source::Copilot(Copilot::new(copilot, github).map_err(fail)?)
            }
            CredentialSource::File { path } => Source::Static(Static::file(path).map_err(fail)?),
            CredentialSource::PerActor { table } => Source::PerActor(self.per_actor(name, table)?),
            CredentialSource::SpiffeX509(_) => {
                return Err(fail(
                    "it is an X.509-SVID (spiffe-x509), not a token: it cannot be presented as \
                     another credential's token"
                        .to_owned(),
                ));
            }
            other => {
                return Err(fail(format!(
                    "source {other:?} is not supported by this broker"
                )));
            }
        };
        self.building.pop();
        let slot = self.intern(name, source, credential.refresh_margin);
        self.named.insert(name.to_owned(), Arc::clone(&slot));
        Ok(slot)
    }

    /// The slot of the run's user in `table` (`source::per_actor`), or the `Forbidden` error
    /// every request for `name` gets. The table is checked whole (readable by its owner only,
    /// well-formed, every `credential` it names exists); only the user's own secret is read.
    fn per_actor(
        &mut self,
        name: &str,
        table: &std::path::Path,
    ) -> Result<Result<Arc<Slot>, TokenError>, BrokerError> {
        use self::source::per_actor::{ActorTable, Entry, Selection};
        let fail = |why: String| BrokerError::Credential {
            name: name.to_owned(),
            why,
        };
        let table = ActorTable::load(table).map_err(fail)?;
        for target in table.credentials() {
            let why = match self.credentials.get(target) {
                None => "which is not configured",
                Some(c) if matches!(c.source, CredentialSource::PerActor { .. }) => {
                    "which is itself per-actor: name the user's own credential"
                }
                Some(_) => continue,
            };
            return Err(fail(format!(
                "the actor table names credential '{target}', {why}"
            )));
        }
        let (entry, id) = match (table.select(self.provenance), self.provenance) {
            (Selection::Entry(entry), Some(p)) => (entry, &p.actor_id),
            (Selection::Forbidden(why), _) => return Ok(Err(TokenError::forbidden(name, why))),
            (Selection::Entry(_), None) => unreachable!("no entry is selected without provenance"),
        };
        let internal = format!("{name} (actor {id})");
        let slot = match entry {
            Entry::Credential(target) => self.slot(&target)?,
            Entry::Env(var) => {
                let secret = Static::env(&var, &self.env.vars).map_err(fail)?;
                self.intern(&internal, Source::Static(secret), None)
            }
            Entry::File(path) => {
                let secret = Static::file(&path).map_err(fail)?;
                self.intern(&internal, Source::Static(secret), None)
            }
        };
        Ok(Ok(slot))
    }

    /// The slot of a credential whose token another one presents: any but AWS keys, which
    /// have no token to present.
    fn presented(&mut self, name: &str) -> Result<Arc<Slot>, BrokerError> {
        let slot = self.slot(name)?;
        if let Source::AwsWebIdentity(_) = slot.source {
            return Err(BrokerError::Credential {
                name: name.to_owned(),
                why: "AWS keys sign requests and cannot be presented as another credential's \
                      token: present a github-oidc credential instead"
                    .to_owned(),
            });
        }
        Ok(slot)
    }

    /// The slot for `source`: an existing one with the same cache key, or a new one.
    fn intern(&mut self, name: &str, source: Source, margin: Option<Duration>) -> Arc<Slot> {
        let key = match &source {
            Source::AnthropicWif(a) => a.cache_key(),
            Source::AwsWebIdentity(a) => a.cache_key(),
            Source::Copilot(c) => c.cache_key(),
            Source::Entra(e) => e.cache_key(),
            Source::GithubOidc(g) => g.cache_key(),
            Source::PerActor(_) => format!("per-actor|{name}"),
            Source::Static(s) => format!("{}|{name}", s.label()),
            Source::TokenExchange(t) => t.cache_key(),
            #[cfg(test)]
            Source::Scripted(_) => format!("scripted|{name}"),
        };
        Arc::clone(self.by_key.entry(key.clone()).or_insert_with(|| {
            Arc::new(Slot {
                name: name.to_owned(),
                key,
                source,
                margin,
                state: Mutex::new(State::default()),
            })
        }))
    }
}
