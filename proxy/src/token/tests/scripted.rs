//! The broker's cache, single flight and backoff under paused time (`tokio::time::pause`),
//! with a scripted source instead of a token endpoint.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::super::*;
use crate::token::source::Minted;

/// A token source that mints `token-N` living `ttl`, after `delay`, or fails as told.
pub(crate) struct Script {
    ttl: Duration,
    delay: Duration,
    mints: AtomicUsize,
    failures: Mutex<VecDeque<MintError>>,
}

impl Script {
    fn new(ttl: Duration, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            delay,
            mints: AtomicUsize::new(0),
            failures: Mutex::new(VecDeque::new()),
        })
    }

    fn fail_next(&self, error: MintError) {
        self.failures.lock().unwrap().push_back(error);
    }

    /// Mint attempts so far (successful or not).
    fn attempts(&self) -> usize {
        self.mints.load(Ordering::SeqCst)
    }

    pub(crate) async fn mint(&self) -> Result<Minted, MintError> {
        let sent = Instant::now();
        let n = self.mints.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if let Some(error) = self.failures.lock().unwrap().pop_front() {
            return Err(error);
        }
        Ok(Minted {
            secret: Secret::new(format!("token-{n}")),
            sent,
            ttl: self.ttl,
            aws: None,
            refresh_in: None,
        })
    }
}

fn broker(script: &Arc<Script>) -> Broker {
    let slot = Arc::new(Slot {
        name: "s".into(),
        key: "scripted|s".into(),
        source: Source::Scripted(Arc::clone(script)),
        margin: None,
        state: Mutex::new(State::default()),
    });
    Broker {
        inner: Arc::new(Inner {
            named: HashMap::from([("s".to_owned(), slot)]),
            x509: HashMap::new(),
            http: TokenHttp::new(None, Duration::from_secs(5)).unwrap(),
            attempts: 3,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }),
    }
}

const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test(start_paused = true)]
async fn five_second_tokens_over_fifteen_seconds_are_never_expired() {
    let script = Script::new(Duration::from_secs(5), MS(100));
    let broker = broker(&script);
    let start = Instant::now();
    let mut seen = Vec::new();
    // A request every 50 ms for 15 s; every token must have at least the guard left.
    while start.elapsed() < Duration::from_secs(15) {
        let token = broker.get("s").await.unwrap();
        assert!(
            token.expires_in >= MS(1250),
            "{:?} at {:?}",
            token.expires_in,
            start.elapsed()
        );
        if seen.last() != Some(&token.secret.expose().to_owned()) {
            seen.push(token.secret.expose().to_owned());
        }
        tokio::time::sleep(MS(50)).await;
    }
    // A background refresh started by the last request may still be in flight: let it land
    // and take its token, so every mint is accounted for.
    tokio::time::sleep(MS(500)).await;
    let last = broker.get("s").await.unwrap();
    if seen.last() != Some(&last.secret.expose().to_owned()) {
        seen.push(last.secret.expose().to_owned());
    }
    // Refreshed at ~2.5 s (±10 %) each time, in the background: 6 to 7 tokens, in order.
    assert!((6..=8).contains(&seen.len()), "{seen:?}");
    assert_eq!(seen.len(), script.attempts());
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, t)| *t == format!("token-{i}"))
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_gets_share_one_mint() {
    let script = Script::new(Duration::from_secs(60), MS(500));
    let broker = broker(&script);
    let gets: Vec<_> = (0..200)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move { broker.get("s").await })
        })
        .collect();
    for get in gets {
        assert_eq!(get.await.unwrap().unwrap().secret.expose(), "token-0");
    }
    assert_eq!(script.attempts(), 1);
    // Past the hard guard (45 s for a 60 s token): again one mint for 200 callers.
    tokio::time::sleep(Duration::from_secs(46)).await;
    let gets: Vec<_> = (0..200)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move { broker.get("s").await })
        })
        .collect();
    for get in gets {
        assert_eq!(get.await.unwrap().unwrap().secret.expose(), "token-1");
    }
    assert_eq!(script.attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_caller_does_not_cancel_the_mint() {
    let script = Script::new(Duration::from_secs(60), MS(500));
    let broker = broker(&script);
    let cancelled = tokio::time::timeout(MS(100), broker.get("s")).await;
    assert!(cancelled.is_err());
    tokio::time::sleep(MS(500)).await;
    // The mint finished and was cached: no second mint.
    assert_eq!(broker.get("s").await.unwrap().secret.expose(), "token-0");
    assert_eq!(script.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_retry_then_back_off_and_fail_fast() {
    let script = Script::new(Duration::from_secs(60), MS(10));
    let broker = broker(&script);
    for _ in 0..3 {
        script.fail_next(MintError::unavailable("down"));
    }
    // Three attempts (1 s, 2 s apart), then the retryable error.
    let start = Instant::now();
    let error = broker.get("s").await.unwrap_err();
    assert!(error.retryable && error.kind == TokenErrorKind::Unavailable);
    assert_eq!(error.to_string(), "credential 's': down");
    assert_eq!(script.attempts(), 3);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    // Backing off: the same error at once, no new attempt.
    let again = broker.get("s").await.unwrap_err();
    assert_eq!(again.message, "down");
    assert_eq!(script.attempts(), 3);
    // After the backoff (3rd failure: 4 s ± 10 %), the next get mints and succeeds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(broker.get("s").await.unwrap().secret.expose(), "token-3");
}

#[tokio::test(start_paused = true)]
async fn configuration_errors_fail_fast_without_retries() {
    let script = Script::new(Duration::from_secs(60), MS(10));
    let broker = broker(&script);
    script.fail_next(MintError::rejected("invalid_client"));
    let error = broker.get("s").await.unwrap_err();
    assert!(!error.retryable);
    assert_eq!(error.kind, TokenErrorKind::Rejected);
    assert_eq!(script.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn stale_token_is_served_while_refresh_fails_until_the_guard() {
    let script = Script::new(Duration::from_secs(100), MS(10));
    let broker = broker(&script);
    assert_eq!(broker.get("s").await.unwrap().secret.expose(), "token-0");
    // Past the refresh point (50 s ± 10 %): the refresh fails, the old token is served.
    tokio::time::sleep(Duration::from_secs(56)).await;
    for _ in 0..10 {
        script.fail_next(MintError::unavailable("down"));
    }
    assert_eq!(broker.get("s").await.unwrap().secret.expose(), "token-0");
    tokio::time::sleep(MS(100)).await;
    assert_eq!(script.attempts(), 2, "one background attempt");
    let token = broker.get("s").await.unwrap();
    assert_eq!(token.secret.expose(), "token-0");
    assert!(token.expires_in > Duration::from_secs(40));
    // Past the guard (75 s): no more stale token; the error once the retries fail.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let error = broker.get("s").await.unwrap_err();
    assert!(error.retryable);
}

#[tokio::test]
async fn unknown_credentials_are_not_retryable() {
    let broker = broker(&Script::new(Duration::from_secs(60), MS(1)));
    let error = broker.get("nope").await.unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::UnknownCredential);
    assert!(!error.retryable);
    assert_eq!(
        error.to_string(),
        "credential 'nope': no credential of that name is configured"
    );
}
