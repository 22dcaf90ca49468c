//! AWF's budget guards (`reference/awf.md` §5.6) that egressd enforces over a whole run,
//! across providers: `maxRuns` (model invocations) and `maxEffectiveTokens` (reported usage,
//! weighted). Once a budget is spent every further model request gets a terminal `403` (not
//! `429`, so SDKs do not retry) and is sent nowhere.
//!
//! Effective tokens weigh what a response reports: input x 1, cache reads x 0.1, output and
//! reasoning x 4. They are counted when the response body ends (`usage.rs`), so requests in
//! flight when the budget runs out still complete; the next one is refused.

use std::sync::atomic::{AtomicU64, Ordering};

use egressd_config::awf::apiproxy::Budget;
use serde_json::{Value, json};

use super::usage::Usage;

/// Effective tokens are kept in thousandths, to add fractional weights without a lock.
const MILLI: u64 = 1000;

/// A run's budgets and what has been spent.
#[derive(Debug, Default)]
pub(crate) struct Spent {
    limits: Budget,
    runs: AtomicU64,
    effective_milli: AtomicU64,
}

/// A budget that is spent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Exceeded {
    /// `maxRuns`.
    Runs { count: u64, max: u64 },
    /// `maxEffectiveTokens`.
    EffectiveTokens { total: f64, max: u64 },
}

impl Exceeded {
    /// AWF's error type.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Runs { .. } => "max_runs_exceeded",
            Self::EffectiveTokens { .. } => "effective_tokens_limit_exceeded",
        }
    }

    /// The message, also the audit reason.
    pub(crate) fn message(&self) -> String {
        match self {
            Self::Runs { count, max } => {
                format!("Maximum LLM invocations exceeded ({count} / {max}).")
            }
            Self::EffectiveTokens { total, max } => {
                format!("Maximum effective tokens exceeded ({total:.2} / {max}).")
            }
        }
    }

    /// AWF's error body.
    pub(crate) fn body(&self) -> Value {
        let mut error = json!({"type": self.kind(), "message": self.message()});
        match self {
            Self::Runs { count, max } => {
                error["invocation_count"] = json!(count);
                error["max_runs"] = json!(max);
            }
            Self::EffectiveTokens { total, max } => {
                error["total_effective_tokens"] = json!(total);
                error["max_effective_tokens"] = json!(max);
            }
        }
        json!({ "error": error })
    }
}

impl Spent {
    /// Nothing spent yet of `limits`.
    pub(crate) fn new(limits: Budget) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Whether any budget is configured (else nothing is counted).
    pub(crate) fn enabled(&self) -> bool {
        self.limits.max_runs.is_some() || self.limits.max_effective_tokens.is_some()
    }

    /// `Err` when a budget is spent: the request must not go out.
    pub(crate) fn check(&self) -> Result<(), Exceeded> {
        if let Some(max) = self.limits.max_runs {
            let count = self.runs.load(Ordering::Relaxed);
            if count >= max {
                return Err(Exceeded::Runs { count, max });
            }
        }
        if let Some(max) = self.limits.max_effective_tokens {
            let milli = self.effective_milli.load(Ordering::Relaxed);
            if milli >= max.saturating_mul(MILLI) {
                #[allow(clippy::cast_precision_loss)] // token counts stay far below 2^52
                let total = milli as f64 / MILLI as f64;
                return Err(Exceeded::EffectiveTokens { total, max });
            }
        }
        Ok(())
    }

    /// Counts one model invocation.
    pub(crate) fn count_run(&self) {
        self.runs.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a response's usage, weighted.
    pub(crate) fn add_usage(&self, usage: &Usage) {
        let weighted = usage.input_tokens.saturating_mul(MILLI)
            + usage.cache_read_tokens.saturating_mul(MILLI / 10)
            + (usage.output_tokens + usage.reasoning_tokens.unwrap_or(0)).saturating_mul(4 * MILLI);
        self.effective_milli.fetch_add(weighted, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_refused_once_the_count_reaches_the_limit() {
        let spent = Spent::new(Budget {
            max_runs: Some(2),
            max_effective_tokens: None,
        });
        assert!(spent.enabled());
        for _ in 0..2 {
            assert_eq!(spent.check(), Ok(()));
            spent.count_run();
        }
        let e = spent.check().unwrap_err();
        assert_eq!(e, Exceeded::Runs { count: 2, max: 2 });
        assert_eq!(
            e.body(),
            json!({"error": {"type": "max_runs_exceeded",
                "message": "Maximum LLM invocations exceeded (2 / 2).",
                "invocation_count": 2, "max_runs": 2}})
        );
    }

    #[test]
    fn effective_tokens_weigh_cache_reads_output_and_reasoning() {
        let spent = Spent::new(Budget {
            max_runs: None,
            max_effective_tokens: Some(40),
        });
        let usage = Usage {
            input_tokens: 11,
            output_tokens: 3,
            cache_read_tokens: 2,
            reasoning_tokens: Some(1),
            found: true,
            ..Usage::default()
        };
        spent.add_usage(&usage); // 11 + 0.2 + 4 x 4 = 27.2
        assert_eq!(spent.check(), Ok(()));
        spent.add_usage(&usage);
        let e = spent.check().unwrap_err();
        assert_eq!(e.kind(), "effective_tokens_limit_exceeded");
        assert_eq!(
            e.message(),
            "Maximum effective tokens exceeded (54.40 / 40)."
        );
        assert!(!Spent::default().enabled());
    }
}
