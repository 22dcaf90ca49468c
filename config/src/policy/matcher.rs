//! The compiled matcher behind [`Policy::decide`](crate::Policy::decide): the hot lookup.
//!
//! One [`Matcher`] per list. [`Pattern::Domain`] entries go into a hash map keyed by the
//! domain; a request name is looked up once per label suffix (`a.b.c`, `b.c`, `c`), so the
//! cost grows with the labels of the name, not with the size of the list.
//! [`Pattern::Wildcard`] entries are tried one by one: first their literal head and tail (the
//! bytes before the first and after the last `*`, which a matching name must start and end
//! with; a few nanoseconds, and most entries stop there), then [`glob_match`], a small NFA
//! over bytes that needs no allocation. [`Pattern::Ip`] entries are a hash map keyed by address.
//!
//! Invariant: names given to [`Matcher::match_name`] are valid, lowercase DNS names of at
//! most [`MAX_NAME_LEN`] bytes without a trailing dot (the policy checks and lowercases
//! them into a stack buffer first).

use std::collections::HashMap;
use std::net::IpAddr;

use super::pattern::{MAX_NAME_LEN, Pattern};

/// Specificity of an IP match: more specific than any name match.
pub(crate) const IP_SPECIFICITY: usize = usize::MAX;

/// The compiled entries of one list. Values are indices into the policy's entry list.
#[derive(Debug, Default)]
pub(crate) struct Matcher {
    domains: HashMap<Box<str>, Vec<usize>>,
    wildcards: Vec<Wildcard>,
    ips: HashMap<IpAddr, Vec<usize>>,
}

impl Matcher {
    /// Adds the entry at `index` with `pattern`. Dead patterns are not added: they never match.
    pub(crate) fn insert(&mut self, index: usize, pattern: &Pattern) {
        match pattern {
            Pattern::Domain(domain) => {
                self.domains
                    .entry(domain.as_str().into())
                    .or_default()
                    .push(index);
            }
            Pattern::Wildcard(glob) => self.wildcards.push(Wildcard::new(glob.as_bytes(), index)),
            Pattern::Ip(ip) => self.ips.entry(*ip).or_default().push(index),
            Pattern::Dead(_) => {}
        }
    }

    /// Calls `found(index, specificity)` for every entry matching `name` (lowercase, valid,
    /// no trailing dot). Specificity is the number of literal bytes the entry matched; a
    /// larger number is a more specific entry.
    pub(crate) fn match_name(&self, name: &str, mut found: impl FnMut(usize, usize)) {
        let mut suffix = name;
        loop {
            if let Some(indices) = self.domains.get(suffix) {
                for &index in indices {
                    found(index, suffix.len());
                }
            }
            match suffix.find('.') {
                Some(dot) => suffix = &suffix[dot + 1..],
                None => break,
            }
        }
        let name = name.as_bytes();
        for w in &self.wildcards {
            if w.may_match(name) && glob_match(&w.glob, name) {
                found(w.index, w.literal);
            }
        }
    }

    /// Calls `found(index, IP_SPECIFICITY)` for every entry naming exactly `ip`
    /// (already in canonical form: IPv4-mapped IPv6 as IPv4).
    pub(crate) fn match_ip(&self, ip: IpAddr, mut found: impl FnMut(usize, usize)) {
        if let Some(indices) = self.ips.get(&ip) {
            for &index in indices {
                found(index, IP_SPECIFICITY);
            }
        }
    }
}

/// A compiled wildcard entry.
#[derive(Debug)]
struct Wildcard {
    glob: Box<[u8]>,
    /// Bytes before the first `*`.
    head: usize,
    /// Bytes after the last `*`.
    tail: usize,
    /// Literal (non-`*`) bytes: the specificity of a match.
    literal: usize,
    index: usize,
}

impl Wildcard {
    fn new(glob: &[u8], index: usize) -> Self {
        let head = glob.iter().position(|&b| b == b'*').unwrap_or(glob.len());
        let tail = glob
            .iter()
            .rev()
            .position(|&b| b == b'*')
            .unwrap_or(glob.len());
        Self {
            glob: glob.into(),
            head,
            tail,
            literal: glob.iter().filter(|&&b| b != b'*').count(),
            index,
        }
    }

    /// A cheap necessary condition: `name` starts with the head and ends with the tail.
    fn may_match(&self, name: &[u8]) -> bool {
        let (head, tail) = (
            &self.glob[..self.head],
            &self.glob[self.glob.len() - self.tail..],
        );
        name.len() >= head.len().max(tail.len())
            && name[..head.len()].eq_ignore_ascii_case(head)
            && name[name.len() - tail.len()..].eq_ignore_ascii_case(tail)
    }
}

/// Matches `name` against an AWF wildcard: `*` matches `[a-zA-Z0-9.-]*` (dots included,
/// as in AWF's `dstdom_regex`), every other byte matches itself ASCII case-insensitively,
/// and the whole name must match (`^...$`).
///
/// Runs an NFA over pattern positions held in two stack arrays: O(name × pattern), no
/// allocation. Patterns longer than [`MAX_NAME_LEN`] never match (the parser marks them
/// dead before they get here).
pub(crate) fn glob_match(glob: &[u8], name: &[u8]) -> bool {
    const STATES: usize = MAX_NAME_LEN + 1;
    if glob.len() > MAX_NAME_LEN {
        return false;
    }
    let mut current = [false; STATES];
    let mut next = [false; STATES];
    current[0] = true;
    skip_stars(glob, &mut current);
    let states = glob.len() + 1;
    for &byte in name {
        next[..states].fill(false);
        let mut alive = false;
        for (position, &want) in glob.iter().enumerate() {
            if !current[position] {
                continue;
            }
            if want == b'*' {
                if star_matches(byte) {
                    next[position] = true;
                    alive = true;
                }
            } else if want.eq_ignore_ascii_case(&byte) {
                next[position + 1] = true;
                alive = true;
            }
        }
        if !alive {
            return false;
        }
        skip_stars(glob, &mut next);
        std::mem::swap(&mut current, &mut next);
    }
    current[glob.len()]
}

/// A `*` may match nothing: every state on a `*` also reaches the position after it.
fn skip_stars(glob: &[u8], states: &mut [bool]) {
    for (position, &byte) in glob.iter().enumerate() {
        if states[position] && byte == b'*' {
            states[position + 1] = true;
        }
    }
}

/// The byte class of `*` in AWF's regexes: `[a-zA-Z0-9.-]` (no underscore).
fn star_matches(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_follows_awf_regexes() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.github.com", "api.github.com", true),
            ("*.github.com", "sub.api.github.com", true),
            ("*.github.com", "API.GitHub.Com", true),
            ("*.github.com", "github.com", false),
            ("*.github.com", ".github.com", true), // regex `^[..]*\.github\.com$` agrees
            ("*.github.com", "github.com.evil.com", false),
            ("api-*.example.com", "api-v1.example.com", true),
            ("api-*.example.com", "api-.example.com", true),
            ("api-*.example.com", "api-x.y.example.com", true),
            ("api-*.example.com", "api.example.com", false),
            ("api.*", "api.anything.tld", true),
            ("api.*", "api.", true),
            ("api.*", "xapi.com", false),
            ("*github.com", "notgithub.com", true),
            ("*.example.com", "_dmarc.example.com", false), // '_' is not in the class
            ("_*.example.com", "_dmarc.example.com", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**.x", "a.x", true),
        ];
        for (glob, name, expected) in cases {
            assert_eq!(
                glob_match(glob.as_bytes(), name.as_bytes()),
                *expected,
                "{glob} ~ {name}"
            );
        }
    }

    #[test]
    fn the_head_and_tail_filter_agrees_with_the_glob() {
        for (glob, name) in [
            ("*.github.com", "api.github.com"),
            ("*.github.com", "github.com"),
            ("api-*.example.com", "api-v1.example.com"),
            ("api-*.example.com", "api.example.com"),
            ("a*b*c", "abc"),
            ("a*b*c", "axxbyy"),
            ("api.*", "api."),
            ("**.x", "a.x"),
            ("x*", "x"),
        ] {
            let w = Wildcard::new(glob.as_bytes(), 0);
            let full = glob_match(glob.as_bytes(), name.as_bytes());
            assert!(
                !full || w.may_match(name.as_bytes()),
                "{glob} ~ {name}: the filter must never reject a match"
            );
        }
        let w = Wildcard::new(b"*.github.com", 0);
        assert!(
            !w.may_match(b"example.org"),
            "a different tail is rejected early"
        );
    }

    #[test]
    fn glob_handles_longest_inputs() {
        let name = format!("{}.com", "a".repeat(MAX_NAME_LEN - 4));
        let glob = format!("{}*", &name[..MAX_NAME_LEN - 1]);
        assert_eq!(glob.len(), MAX_NAME_LEN);
        assert!(glob_match(glob.as_bytes(), name.as_bytes()));
        assert!(!glob_match(
            "a".repeat(MAX_NAME_LEN + 1).as_bytes(),
            name.as_bytes()
        ));
    }

    #[test]
    fn domains_are_looked_up_per_label_suffix() {
        let mut matcher = Matcher::default();
        matcher.insert(0, &Pattern::Domain("github.com".into()));
        matcher.insert(1, &Pattern::Domain("api.github.com".into()));
        matcher.insert(2, &Pattern::Dead("never"));
        let mut seen = Vec::new();
        matcher.match_name("x.api.github.com", |i, s| seen.push((i, s)));
        assert_eq!(seen, [(1, 14), (0, 10)]);
        seen.clear();
        matcher.match_name("notgithub.com", |i, s| seen.push((i, s)));
        assert!(seen.is_empty());
    }
}
