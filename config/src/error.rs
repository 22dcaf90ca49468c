//! Configuration errors: what is wrong, where, and how to fix it.
//!
//! Every [`Error`] names its place: `path:line:column` for a file, the flag name for a
//! command-line value. [`ConfigBuilder::build`](crate::ConfigBuilder::build) returns
//! [`Error::Partial`] holding every problem it found, so a user fixes a file in one go.
//! Messages are lowercase and have no trailing period.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A configuration error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value is invalid; `kind` says what is wrong and how to fix it, `at` says where.
    #[error("{at}: {kind}")]
    Invalid {
        /// Where the value came from.
        at: Location,
        /// What is wrong with it.
        kind: ErrorKind,
    },
    /// A file could not be read: check that the path exists and is readable.
    #[error("{}: cannot read the file: {io}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (shown in the message, so not also returned by `source()`).
        io: Arc<std::io::Error>,
    },
    /// Several errors, in the order the sources were given, one per line.
    #[error("{}", DisplayLines(.0))]
    Partial(Vec<Error>),
}

impl Error {
    /// Every single error inside this one (flattening [`Error::Partial`]), in order.
    pub fn errors(&self) -> Vec<&Error> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Error>) {
        match self {
            Error::Partial(errors) => errors.iter().for_each(|e| e.collect(out)),
            other => out.push(other),
        }
    }

    /// Where the error is, when it is a single [`Error::Invalid`].
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::Invalid { at, .. } => Some(at),
            _ => None,
        }
    }

    /// Builds one error from several: `None` for none, the error itself for one,
    /// [`Error::Partial`] otherwise.
    pub(crate) fn from_many(mut errors: Vec<Error>) -> Option<Error> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(Error::Partial(errors)),
        }
    }

    pub(crate) fn at(at: Location, kind: ErrorKind) -> Error {
        Error::Invalid { at, kind }
    }
}

struct DisplayLines<'a>(&'a [Error]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Where an invalid value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A command-line flag, such as `--allow-domains`.
    Flag(&'static str),
    /// A place in a file; `line` and `column` count from 1, `column` in characters.
    File {
        /// The file, as given to the builder.
        path: PathBuf,
        /// Line number, from 1.
        line: u32,
        /// Column number in characters, from 1.
        column: u32,
    },
    /// A value built into egressd (a bug if it is ever invalid).
    Builtin(&'static str),
}

impl Location {
    /// The location of byte `offset` in `text`, a file at `path`.
    pub(crate) fn in_text(path: &std::path::Path, text: &str, offset: usize) -> Location {
        let (line, column) = line_column(text, offset);
        Location::File {
            path: path.to_path_buf(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Flag(flag) => f.write_str(flag),
            Location::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Location::Builtin(what) => write!(f, "built-in {what}"),
        }
    }
}

/// 1-based line and character column of byte `offset` in `text` (clamped to the text).
pub(crate) fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (saturate(line), saturate(column))
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What is wrong with a value, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A value (in an `[[intercept]]` or `[dns]` table) is invalid; the text says what and
    /// how to fix it.
    #[error("{0}")]
    InvalidValue(String),
    /// An allow or block entry is not a valid domain, pattern or IP address.
    #[error("invalid domain or pattern '{entry}': {why}")]
    InvalidEntry {
        /// The entry as written.
        entry: String,
        /// Why it was rejected.
        why: EntryError,
    },
    /// AWF's `localhost` keyword, which egressd does not support.
    #[error(
        "'{entry}' is not supported: egressd has no localhost keyword; \
         allow loopback destinations per port with `loopback_ports = [PORT]` in the config file"
    )]
    LocalhostKeyword {
        /// The entry as written.
        entry: String,
    },
    /// A `--resolve` override is malformed.
    #[error("invalid resolve override '{spec}': {why}")]
    InvalidResolve {
        /// The value as written.
        spec: String,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// A `--dns-server` address is malformed.
    #[error("invalid dns server '{spec}': {why}")]
    InvalidDnsServer {
        /// The value as written.
        spec: String,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// A duration in `[timeouts]` is malformed or zero.
    #[error("invalid duration '{text}' for {key}: {why}")]
    InvalidDuration {
        /// The key, such as `timeouts.idle`.
        key: String,
        /// The value as written.
        text: String,
        /// What is wrong and how to fix it.
        why: &'static str,
    },
    /// A `[[credential]]` table is invalid or refers to a missing or looping credential.
    #[error("credential '{name}': {why}")]
    Credential {
        /// The credential's name.
        name: String,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// Port 0 in a port list.
    #[error("port 0 is not a valid destination port: use a port from 1 to 65535")]
    PortZero,
    /// The file is not valid TOML or does not have the documented shape (unknown key,
    /// wrong type); the message is the parser's.
    #[error("{message}")]
    Toml {
        /// The parser's message.
        message: String,
    },
}

/// Why an allow or block entry was rejected (AWF's validation, `src/domain-validation.ts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Nothing left once trimmed and the scheme prefix removed.
    #[error("the entry is empty: write a domain such as 'example.com'")]
    Empty,
    /// Contains whitespace, which never appears in a domain.
    #[error("it contains whitespace: separate entries with commas")]
    Whitespace,
    /// Contains NUL, a quote, a backquote, `;`, `#` or `\`.
    #[error("it contains {0:?}, which never appears in a domain: remove it")]
    Forbidden(char),
    /// Contains a character outside letters, digits, `-`, `_`, `.` and `*`.
    #[error(
        "it contains {0:?}: domains are made of letters, digits, '-', '_', '.' and '*' wildcards"
    )]
    InvalidChar(char),
    /// A lone `.`.
    #[error("a lone '.' is not a domain: write a domain such as 'example.com'")]
    LoneDot,
    /// Contains `..` (an empty label).
    #[error("it contains '..', an empty label: remove the extra dot")]
    EmptyLabel,
    /// Made only of `*` and `.`: it would match every domain.
    #[error("it would match every domain: name the domains to allow, such as '*.example.com'")]
    MatchesEverything,
    /// Two or more bare `*` labels and at most one other label, such as `*.*.com`.
    #[error(
        "it has two or more '*' labels and at most one other label, so it matches almost \
         every domain: name a longer suffix, such as '*.example.com'"
    )]
    TooBroad,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one_in_characters() {
        let text = "ab\ncdé f\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        // 'f' is after the two-byte 'é': byte 8, character column 5.
        assert_eq!(line_column(text, 8), (2, 5));
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn partial_shows_one_error_per_line_and_flattens() {
        let one = Error::at(Location::Flag("--allow-domains"), ErrorKind::PortZero);
        let two = Error::at(
            Location::File {
                path: "a.toml".into(),
                line: 3,
                column: 7,
            },
            ErrorKind::PortZero,
        );
        let all = Error::Partial(vec![one, Error::Partial(vec![two])]);
        assert_eq!(all.errors().len(), 2);
        let text = all.to_string();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("--allow-domains: port 0"));
        assert!(lines[1].starts_with("a.toml:3:7: port 0"));
    }
}
