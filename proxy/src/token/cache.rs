//! One cache entry per credential, and the refresh policy (`reference/tokens.md` §7.2).
//!
//! [`State`] is the state of one cache slot: the current token, the single mint in flight and
//! the failure backoff. [`State::lookup`] decides, for one `get` at one instant, whether to
//! serve the cached token (and maybe start a background refresh), wait for the mint in flight,
//! fail fast during backoff, or start a mint; [`State::complete`] records a mint's result.
//! Both are synchronous and run under the slot's lock, which is never held across an await.
//!
//! The times are relative: a token's lifetime is measured from the instant its request was
//! *sent* ([`tokio::time::Instant`], so tests can pause time), never from a wall clock, so
//! clock skew between this host and the token endpoint does not matter.
//!
//! # Policy
//!
//! For a token with lifetime `ttl`:
//! * **hard guard** `min(60 s, ttl/4)`: a token with less left is never handed out;
//! * **refresh point** `min(0.75 ttl, ttl − 5 min)` floored at `ttl/2`, or `ttl − margin` for
//!   a credential with `refresh_margin` (same floor), or the server's `refresh_in`; then ±10 %
//!   jitter, and never later than the hard guard;
//! * between the refresh point and the hard guard the cached token is served while one
//!   background refresh runs; if that fails the token is still served (stale) until the guard;
//! * AWS keys (`aws-web-identity`) follow botocore's windows instead: a background refresh
//!   15 min before expiry (advisory) and never handed out in the last 10 min (mandatory),
//!   scaled to `ttl/4` and `ttl/6` for lifetimes under an hour ([`plan_aws`]);
//! * after a failure, no new mint starts before `min(1 s · 2^(n−1), 30 s)` ±10 % (or the
//!   server's `Retry-After`, if longer); meanwhile a `get` without a usable token fails fast
//!   with the last error.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::error::TokenError;
use super::secret::Secret;
use super::source::aws_web_identity::AwsCredentials;

/// The hard guard never exceeds this.
pub(crate) const HARD_GUARD: Duration = Duration::from_mins(1);
/// The default refresh point is at most this long before expiry (`ttl − 5 min`).
const DEFAULT_MARGIN: Duration = Duration::from_mins(5);
/// botocore's advisory refresh window for AWS keys (background refresh).
const AWS_ADVISORY: Duration = Duration::from_mins(15);
/// botocore's mandatory refresh window for AWS keys (never handed out within it).
const AWS_MANDATORY: Duration = Duration::from_mins(10);
/// A server's `Retry-After` is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_mins(5);

/// What a mint in flight reports to the `get` calls waiting for it.
pub(crate) type MintResult = Result<Entry, TokenError>;

/// A cached token.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) secret: Secret,
    /// AWS temporary keys, for `aws-web-identity` (then `secret` is empty).
    pub(crate) aws: Option<AwsCredentials>,
    /// When it expires (request sent + `expires_in`).
    pub(crate) expires_at: Instant,
    /// From then on, `get` starts a background refresh.
    pub(crate) refresh_at: Instant,
    /// From then on (the hard guard), it is never handed out.
    pub(crate) usable_until: Instant,
}

/// When to refresh and stop using a token, relative to when its request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) refresh_after: Duration,
    pub(crate) usable_for: Duration,
}

/// Computes the [`Plan`] of a token living `ttl`. `jitter` is in `[-0.1, 0.1]`.
pub(crate) fn plan(
    ttl: Duration,
    margin: Option<Duration>,
    refresh_in: Option<Duration>,
    jitter: f64,
) -> Plan {
    let guard = HARD_GUARD.min(ttl / 4);
    let usable_for = ttl.saturating_sub(guard);
    let base = match (refresh_in, margin) {
        (Some(server), _) => server,
        (None, Some(margin)) => ttl.saturating_sub(margin).max(ttl / 2),
        (None, None) => ttl
            .mul_f64(0.75)
            .min(ttl.saturating_sub(DEFAULT_MARGIN))
            .max(ttl / 2),
    };
    Plan {
        refresh_after: base.mul_f64(1.0 + jitter.clamp(-0.1, 0.1)).min(usable_for),
        usable_for,
    }
}

/// The [`Plan`] of AWS keys living `ttl` (botocore's windows, `reference/tokens.md` §7.1):
/// refresh `min(15 min, ttl/4)` before expiry (or `margin`, floored at `ttl/2`), stop handing
/// them out `min(10 min, ttl/6)` before expiry. `jitter` is in `[-0.1, 0.1]`.
pub(crate) fn plan_aws(ttl: Duration, margin: Option<Duration>, jitter: f64) -> Plan {
    let usable_for = ttl.saturating_sub(AWS_MANDATORY.min(ttl / 6));
    let advisory = margin.unwrap_or(AWS_ADVISORY.min(ttl / 4));
    let base = ttl.saturating_sub(advisory).max(ttl / 2);
    Plan {
        refresh_after: base.mul_f64(1.0 + jitter.clamp(-0.1, 0.1)).min(usable_for),
        usable_for,
    }
}

/// The delay before the next mint after `failures` consecutive failures (at least 1).
/// `jitter` is in `[-0.1, 0.1]`.
pub(crate) fn backoff(
    failures: u32,
    min: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let delay = min.saturating_mul(1 << doublings).min(max);
    let delay = delay.mul_f64(1.0 + jitter.clamp(-0.1, 0.1));
    match retry_after {
        Some(after) => delay.max(after.min(MAX_RETRY_AFTER)),
        None => delay,
    }
}

/// A uniformly random jitter in `[-0.1, 0.1]`.
pub(crate) fn jitter() -> f64 {
    rand::random_range(-0.1..=0.1)
}

/// The state of one cache slot.
#[derive(Debug, Default)]
pub(crate) struct State {
    entry: Option<Entry>,
    in_flight: Option<watch::Receiver<Option<MintResult>>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<TokenError>,
}

/// What a `get` does, decided by [`State::lookup`].
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Fail fast with the last error: no usable token, and still backing off.
    Fail(TokenError),
    /// No usable token and nothing in flight: run this mint (its sender is registered as the
    /// one in flight), then wait like [`Lookup::Wait`].
    Mint(
        watch::Sender<Option<MintResult>>,
        watch::Receiver<Option<MintResult>>,
    ),
    /// Hand out this token; when a sender is given, also run a background refresh with it.
    Serve(Entry, Option<watch::Sender<Option<MintResult>>>),
    /// Wait for the mint in flight.
    Wait(watch::Receiver<Option<MintResult>>),
}

impl State {
    /// Decides what a `get` at `now` does, registering a new mint in flight if it starts one.
    pub(crate) fn lookup(&mut self, now: Instant) -> Lookup {
        let backing_off = self.retry_at.is_some_and(|at| now < at);
        if let Some(entry) = self.entry.as_ref().filter(|e| now < e.usable_until) {
            let entry = entry.clone();
            let refresh = now >= entry.refresh_at && self.in_flight.is_none() && !backing_off;
            return Lookup::Serve(entry, refresh.then(|| self.start()));
        }
        if let Some(rx) = &self.in_flight {
            return Lookup::Wait(rx.clone());
        }
        if let (true, Some(error)) = (backing_off, &self.last_error) {
            return Lookup::Fail(error.clone());
        }
        let tx = self.start();
        let rx = tx.subscribe();
        Lookup::Mint(tx, rx)
    }

    /// Records the result of the mint in flight; `delay` is the backoff after a failure.
    pub(crate) fn complete(&mut self, result: &MintResult, now: Instant, delay: Duration) {
        self.in_flight = None;
        match result {
            Ok(entry) => {
                self.entry = Some(entry.clone());
                self.failures = 0;
                self.retry_at = None;
                self.last_error = None;
            }
            Err(error) => {
                self.retry_at = Some(now + delay);
                self.last_error = Some(error.clone());
            }
        }
    }

    /// Counts a failure and returns how many in a row there have been.
    pub(crate) fn fail(&mut self) -> u32 {
        self.failures = self.failures.saturating_add(1);
        self.failures
    }

    /// Drops the cached token, so the next `get` mints (after an upstream said it expired).
    pub(crate) fn invalidate(&mut self) {
        self.entry = None;
    }

    fn start(&mut self) -> watch::Sender<Option<MintResult>> {
        let (tx, rx) = watch::channel(None);
        self.in_flight = Some(rx);
        tx
    }
}

impl Entry {
    /// An entry for a token whose request was sent at `sent` and that lives `ttl`.
    pub(crate) fn new(secret: Secret, sent: Instant, ttl: Duration, plan: Plan) -> Self {
        Entry {
            secret,
            aws: None,
            expires_at: sent + ttl,
            refresh_at: sent + plan.refresh_after,
            usable_until: sent + plan.usable_for,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn refresh_point_follows_the_documented_policy() {
        // One hour: 0.75 ttl (45 min) beats ttl − 5 min (55 min).
        let p = plan(S(3600), None, None, 0.0);
        assert_eq!(
            p,
            Plan {
                refresh_after: S(2700),
                usable_for: S(3540)
            }
        );
        // Ten minutes: ttl − 5 min (5 min) beats 0.75 ttl, and equals the ttl/2 floor.
        assert_eq!(plan(S(600), None, None, 0.0).refresh_after, S(300));
        // GitHub's 5-minute JWT: floored at ttl/2; guard 60 s.
        let p = plan(S(300), None, None, 0.0);
        assert_eq!(
            p,
            Plan {
                refresh_after: S(150),
                usable_for: S(240)
            }
        );
        // Very short test lifetimes: guard ttl/4.
        let p = plan(S(5), None, None, 0.0);
        assert_eq!(p.refresh_after, Duration::from_millis(2500));
        assert_eq!(p.usable_for, Duration::from_millis(3750));
        // A margin replaces the default, with the same floor.
        assert_eq!(
            plan(S(3600), Some(S(600)), None, 0.0).refresh_after,
            S(3000)
        );
        assert_eq!(
            plan(S(3600), Some(S(3500)), None, 0.0).refresh_after,
            S(1800)
        );
        // The server's refresh_in wins, but never past the guard.
        assert_eq!(
            plan(S(1800), None, Some(S(1500)), 0.0).refresh_after,
            S(1500)
        );
        assert_eq!(
            plan(S(1800), None, Some(S(1790)), 0.0).refresh_after,
            S(1740)
        );
        // A zero lifetime is never usable.
        assert_eq!(plan(S(0), None, None, 0.0).usable_for, S(0));
    }

    #[test]
    fn aws_keys_follow_botocores_windows() {
        // One hour: refresh 15 min before expiry, never handed out in the last 10 min.
        let p = plan_aws(S(3600), None, 0.0);
        assert_eq!(
            p,
            Plan {
                refresh_after: S(2700),
                usable_for: S(3000)
            }
        );
        // Twelve hours: the same absolute windows.
        let p = plan_aws(S(43200), None, 0.0);
        assert_eq!((p.refresh_after, p.usable_for), (S(42300), S(42600)));
        // STS's shortest session (15 min): scaled, ttl/4 and ttl/6.
        let p = plan_aws(S(900), None, 0.0);
        assert_eq!((p.refresh_after, p.usable_for), (S(675), S(750)));
        // A 6-second test session.
        let p = plan_aws(S(6), None, 0.0);
        assert_eq!(
            (p.refresh_after, p.usable_for),
            (S(4) + Duration::from_millis(500), S(5))
        );
        // Jitter never pushes the refresh past the mandatory window; a margin replaces 15 min.
        for jitter in [-0.1, 0.1] {
            let p = plan_aws(S(6), None, jitter);
            assert!(p.refresh_after < p.usable_for, "{p:?}");
        }
        assert_eq!(plan_aws(S(3600), Some(S(1200)), 0.0).refresh_after, S(2400));
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_before_the_guard() {
        for jitter in [-0.5, -0.1, 0.0, 0.1, 0.5] {
            let p = plan(S(3600), None, None, jitter);
            assert!(
                p.refresh_after >= S(2430) && p.refresh_after <= S(2970),
                "{p:?}"
            );
            let p = plan(S(5), None, None, jitter);
            assert!(p.refresh_after < p.usable_for, "{p:?}");
        }
        for _ in 0..1000 {
            let j = jitter();
            assert!((-0.1..=0.1).contains(&j));
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let delays: Vec<_> = (1..=7)
            .map(|n| backoff(n, S(1), S(30), None, 0.0))
            .collect();
        assert_eq!(delays, [S(1), S(2), S(4), S(8), S(16), S(30), S(30)]);
        assert_eq!(backoff(u32::MAX, S(1), S(30), None, 0.0), S(30));
        assert_eq!(
            backoff(1, S(1), S(30), None, 0.1),
            Duration::from_millis(1100)
        );
        assert_eq!(backoff(1, S(1), S(30), Some(S(20)), 0.0), S(20));
        assert_eq!(backoff(1, S(1), S(30), Some(S(3600)), 0.0), S(300));
    }

    #[tokio::test(start_paused = true)]
    async fn lookup_serves_refreshes_once_and_backs_off() {
        let mut state = State::default();
        let t0 = Instant::now();
        // Empty: the first get mints; the second waits for it.
        let Lookup::Mint(tx, _) = state.lookup(t0) else {
            panic!()
        };
        assert!(matches!(state.lookup(t0), Lookup::Wait(_)));
        let entry = Entry::new(Secret::new("t1"), t0, S(100), plan(S(100), None, None, 0.0));
        let result = Ok(entry);
        tx.send_replace(Some(result.clone()));
        state.complete(&result, t0, S(0));
        // Fresh: served, no refresh.
        assert!(matches!(state.lookup(t0 + S(10)), Lookup::Serve(_, None)));
        // Past the refresh point (50 s): one get starts the refresh, the others are served.
        let Lookup::Serve(_, Some(_refresh)) = state.lookup(t0 + S(60)) else {
            panic!()
        };
        assert!(matches!(state.lookup(t0 + S(61)), Lookup::Serve(_, None)));
        // The refresh failed: still served (stale) until the guard, no refresh while backing off.
        let error = TokenError::unknown("x");
        state.fail();
        state.complete(&Err(error), t0 + S(62), S(5));
        assert!(matches!(state.lookup(t0 + S(63)), Lookup::Serve(_, None)));
        assert!(matches!(
            state.lookup(t0 + S(67)),
            Lookup::Serve(_, Some(_))
        ));
        let mut state = State {
            in_flight: None,
            ..state
        };
        // Past the guard (75 s) while backing off: fail fast with the last error.
        state.fail();
        state.complete(&Err(TokenError::unknown("x")), t0 + S(70), S(10));
        assert!(matches!(state.lookup(t0 + S(76)), Lookup::Fail(_)));
        // Backoff over: mint.
        assert!(matches!(state.lookup(t0 + S(80)), Lookup::Mint(..)));
    }
}
