//! AWF's api-proxy rate limits (`reference/awf.md` §5.5): per provider, requests per minute,
//! requests per hour and request bytes per minute, over sliding windows. A request over a
//! limit gets `429` with `Retry-After` and AWF's `rate_limit_error` body.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use egressd_config::awf::apiproxy::{Provider, RateLimit};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Which window refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// Requests per minute.
    Minute,
    /// Requests per hour.
    Hour,
    /// Request bytes per minute.
    MinuteBytes,
}

impl Window {
    /// AWF's name of the window (`window` in the error body).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Minute => "per_minute",
            Self::Hour => "per_hour",
            Self::MinuteBytes => "per_minute_bytes",
        }
    }
}

/// A refusal: which window, its limit, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exceeded {
    /// The window.
    pub window: Window,
    /// Its limit (requests, or bytes).
    pub limit: u64,
    /// Whole seconds until the window has room again (at least 1).
    pub retry_after: u64,
}

/// The limits of every provider.
pub(crate) struct Limiter {
    limit: RateLimit,
    providers: [Mutex<History>; 5],
}

/// The requests of one provider within the last hour: (arrival, body bytes).
#[derive(Default)]
struct History {
    requests: VecDeque<(Instant, u64)>,
}

impl Limiter {
    /// A limiter enforcing `limit` per provider.
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            providers: Default::default(),
        }
    }

    /// Counts a request of `bytes` body bytes to `provider` at `now`, or refuses it (a refused
    /// request is not counted).
    pub(crate) fn admit(
        &self,
        provider: Provider,
        bytes: u64,
        now: Instant,
    ) -> Result<(), Exceeded> {
        let index = Provider::ALL
            .iter()
            .position(|p| *p == provider)
            .unwrap_or(0);
        let mut history = self.providers[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let requests = &mut history.requests;
        while requests
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= HOUR)
        {
            requests.pop_front();
        }
        // Arrivals are in order: the last minute's requests are a suffix of the queue.
        let first = requests.partition_point(|(t, _)| now.saturating_duration_since(*t) >= MINUTE);
        let in_minute = (requests.len() - first) as u64;
        let retry = |oldest: Option<&Instant>, window: Duration| {
            oldest.map_or(1, |t| {
                window
                    .saturating_sub(now.saturating_duration_since(*t))
                    .as_secs()
                    .max(1)
            })
        };
        let oldest_in_minute = requests.get(first).map(|(t, _)| t);
        if in_minute >= u64::from(self.limit.per_minute) {
            return Err(Exceeded {
                window: Window::Minute,
                limit: u64::from(self.limit.per_minute),
                retry_after: retry(oldest_in_minute, MINUTE),
            });
        }
        if requests.len() as u64 >= u64::from(self.limit.per_hour) {
            return Err(Exceeded {
                window: Window::Hour,
                limit: u64::from(self.limit.per_hour),
                retry_after: retry(requests.front().map(|(t, _)| t), HOUR),
            });
        }
        let bytes_in_minute: u64 = requests.range(first..).map(|(_, b)| *b).sum();
        if bytes_in_minute.saturating_add(bytes) > self.limit.bytes_per_minute {
            return Err(Exceeded {
                window: Window::MinuteBytes,
                limit: self.limit.bytes_per_minute,
                retry_after: retry(oldest_in_minute, MINUTE),
            });
        }
        requests.push_back((now, bytes));
        Ok(())
    }

    /// Requests left in the per-minute window of `provider` at `now` (`X-RateLimit-Remaining`).
    pub(crate) fn remaining(&self, provider: Provider, now: Instant) -> u64 {
        let index = Provider::ALL
            .iter()
            .position(|p| *p == provider)
            .unwrap_or(0);
        let history = self.providers[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let used = history
            .requests
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) < MINUTE)
            .count() as u64;
        u64::from(self.limit.per_minute).saturating_sub(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, per_hour: u32, bytes_per_minute: u64) -> Limiter {
        Limiter::new(RateLimit {
            per_minute,
            per_hour,
            bytes_per_minute,
        })
    }

    #[test]
    fn per_minute_then_the_window_slides() {
        let l = limiter(2, 100, 1_000_000);
        let t0 = Instant::now();
        assert!(l.admit(Provider::OpenAi, 0, t0).is_ok());
        assert!(
            l.admit(Provider::OpenAi, 0, t0 + Duration::from_secs(10))
                .is_ok()
        );
        let refused = l
            .admit(Provider::OpenAi, 0, t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(refused.window, Window::Minute);
        assert_eq!(refused.limit, 2);
        assert_eq!(refused.retry_after, 40);
        // Another provider has its own windows.
        assert!(
            l.admit(Provider::Anthropic, 0, t0 + Duration::from_secs(20))
                .is_ok()
        );
        // A minute after the first request there is room again.
        assert!(
            l.admit(Provider::OpenAi, 0, t0 + Duration::from_secs(61))
                .is_ok()
        );
        assert_eq!(
            l.remaining(Provider::OpenAi, t0 + Duration::from_secs(61)),
            0
        );
    }

    #[test]
    fn per_hour_and_bytes() {
        let l = limiter(100, 3, 1_000);
        let t0 = Instant::now();
        for i in 0..3 {
            l.admit(Provider::Copilot, 10, t0 + Duration::from_secs(120 * i))
                .unwrap();
        }
        let refused = l
            .admit(Provider::Copilot, 10, t0 + Duration::from_secs(400))
            .unwrap_err();
        assert_eq!((refused.window, refused.limit), (Window::Hour, 3));
        assert_eq!(refused.retry_after, 3200);

        let l = limiter(100, 100, 1_000);
        l.admit(Provider::Gemini, 900, t0).unwrap();
        let refused = l.admit(Provider::Gemini, 200, t0).unwrap_err();
        assert_eq!(refused.window, Window::MinuteBytes);
        assert_eq!(refused.window.name(), "per_minute_bytes");
        assert!(
            l.admit(Provider::Gemini, 100, t0).is_ok(),
            "a smaller body fits"
        );
    }
}
