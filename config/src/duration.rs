//! Humane durations (`500ms`, `10s`, `5m`, `1h`), as every table of the file writes them. A
//! leaf: it imports nothing from the crate.

use std::time::Duration;

/// Parses a humane duration: a whole number followed by `ms`, `s`, `m` or `h`.
///
/// # Errors
///
/// A text saying what to write instead, for a malformed, overflowing or zero duration.
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    const HELP: &str =
        "write a whole number and a unit (ms, s, m or h), such as '500ms', '10s' or '5m'";
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| HELP)?;
    let millis_per_unit = match unit.trim_start() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(HELP),
    };
    let millis = number
        .checked_mul(millis_per_unit)
        .ok_or("the duration is too long")?;
    if millis == 0 {
        return Err("a zero timeout would fail every connection: use a positive duration");
    }
    Ok(Duration::from_millis(millis))
}
