//! What the exchange fakes share: verifying a [`FakeOidc`](super::FakeOidc) JWT the way a
//! relying party does, and RFC 3339 times.

use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use super::{oidc, unix_now};

/// Why a presented JWT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtProblem {
    /// Not a JWT, not RS256, unknown `kid` or a bad signature.
    Invalid,
    /// Past its `exp` (or not yet valid, beyond 60 s of leeway).
    Expired,
    /// Another issuer.
    Issuer,
    /// No `aud` equals the expected audience.
    Audience,
}

/// Verifies `jwt` against `keys`' published keys, `iss` (the provider's configured issuer),
/// its validity window and its audience (`aud` as a string or a list); returns its claims.
pub(crate) fn verify(
    keys: &oidc::State,
    issuer: &str,
    jwt: &str,
    audience: &str,
) -> Result<Value, JwtProblem> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| JwtProblem::Invalid)?;
    if header.alg != Algorithm::RS256 {
        return Err(JwtProblem::Invalid);
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| keys.decoding_key(kid))
        .ok_or(JwtProblem::Invalid)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false; // checked below, to tell expiry apart
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map_err(|_| JwtProblem::Invalid)?
        .claims;
    let now = unix_now();
    if claims["exp"].as_u64().unwrap_or(0) <= now || claims["nbf"].as_u64().unwrap_or(0) > now + 60
    {
        return Err(JwtProblem::Expired);
    }
    if claims["iss"].as_str() != Some(issuer) {
        return Err(JwtProblem::Issuer);
    }
    let matches = match &claims["aud"] {
        Value::String(a) => a == audience,
        Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !matches {
        return Err(JwtProblem::Audience);
    }
    Ok(claims)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for `secs` after the Unix epoch (civil-from-days, proleptic
/// Gregorian).
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).expect("test times fit an i64");
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
