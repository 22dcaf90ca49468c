//! [`Secret`]: a token or key that must never be printed.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroize;

/// A secret string: a minted token, a static key, the GitHub request token.
///
/// `Debug` and `Display` print `[redacted]`, so a secret inside a logged struct or error stays
/// hidden. Clones share one allocation, which is zeroed when the last clone is dropped.
/// [`expose`](Self::expose) is the only way to read it; call it where the value goes on the
/// wire, nowhere else.
#[derive(Clone)]
pub struct Secret(Arc<Inner>);

struct Inner(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::new(Inner(value.into())))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let secret = Secret::new("hunter2-token");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some([redacted])");
        assert_eq!(secret.expose(), "hunter2-token");
    }
}
