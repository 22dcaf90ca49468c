//! Several inputs read as one stream ordered by record time: a k-way merge over per-input
//! line iterators. Streaming: each input holds at most one parsed line (in a binary heap
//! keyed by its time), so memory does not grow with the size of the files.
//!
//! Order: the line with the earliest time comes next; equal times go by input order. A line
//! without a readable time (a malformed or blank line, or a record without `time`) keeps
//! its place in its input: it comes out right after the previous line of the same input
//! (lines before an input's first timed line come out first). An input whose times go
//! backwards is never reordered: each input's lines come out in file order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead};

use super::read::{self, Line};

/// An I/O error while merging, and the index of the input it came from.
#[derive(Debug)]
pub struct MergeError {
    /// The input (index into the readers given to [`merge`]).
    pub input: usize,
    /// What went wrong.
    pub error: io::Error,
}

/// Reads `readers` as one stream ordered by time and passes each line, parsed, to `each`
/// with the index of its input.
pub fn merge<R: BufRead>(
    readers: Vec<R>,
    mut each: impl FnMut(usize, Line),
) -> Result<(), MergeError> {
    let mut m = Merge {
        pending: readers.iter().map(|_| None).collect(),
        feeds: readers,
        heap: BinaryHeap::new(),
        buf: Vec::with_capacity(1024),
    };
    for input in 0..m.feeds.len() {
        m.advance(input, &mut each)?;
    }
    while let Some(Reverse((_, input))) = m.heap.pop() {
        if let Some(line) = m.pending.get_mut(input).and_then(Option::take) {
            each(input, line);
        }
        m.advance(input, &mut each)?;
    }
    Ok(())
}

/// The merge's state.
struct Merge<R> {
    feeds: Vec<R>,
    /// The next timed line of each input (in the heap), if any.
    pending: Vec<Option<Line>>,
    /// (time, input) of every pending line, earliest first.
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    buf: Vec<u8>,
}

impl<R: BufRead> Merge<R> {
    /// Reads `input` up to its next timed line, which waits in the heap; lines without a
    /// time on the way go to `each` at once (they follow their input's previous line).
    fn advance(
        &mut self,
        input: usize,
        each: &mut impl FnMut(usize, Line),
    ) -> Result<(), MergeError> {
        let Some(feed) = self.feeds.get_mut(input) else {
            return Ok(());
        };
        loop {
            self.buf.clear();
            let n = feed
                .read_until(b'\n', &mut self.buf)
                .map_err(|error| MergeError { input, error })?;
            if n == 0 {
                return Ok(());
            }
            let line = read::parse(&String::from_utf8_lossy(&self.buf));
            match line.time() {
                Some(t) => {
                    self.pending[input] = Some(line);
                    self.heap.push(Reverse((t, input)));
                    return Ok(());
                }
                None => each(input, line),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The merged order as `input:name` (records) or `input:arm`/`input:?` (others).
    fn order(files: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        merge(files.iter().map(|f| f.as_bytes()).collect(), |i, line| {
            out.push(match line {
                Line::Record(r) => format!("{i}:{}", r.name.unwrap_or_default()),
                Line::Lifecycle(l) => format!("{i}:{}", if l.arm { "arm" } else { "disarm" }),
                Line::Skip | Line::Malformed => format!("{i}:?"),
            });
        })
        .unwrap();
        out
    }

    fn rec(second: u32, name: &str) -> String {
        format!(
            r#"{{"time":"2026-01-01T00:00:{second:02}Z","sandbox":"s","proto":"tls","name":"{name}","port":443,"decision":"allow"}}"#
        ) + "\n"
    }

    #[test]
    fn two_files_interleave_by_time_with_ties_in_input_order() {
        let a = [rec(1, "a1"), rec(3, "a3"), rec(5, "a5")].concat();
        let b = [rec(0, "b0"), rec(3, "b3"), rec(4, "b4"), rec(9, "b9")].concat();
        assert_eq!(
            order(&[&a, &b]),
            ["1:b0", "0:a1", "0:a3", "1:b3", "1:b4", "0:a5", "1:b9"]
        );
    }

    #[test]
    fn lines_without_time_follow_their_files_previous_line() {
        let no_time =
            r#"{"sandbox":"s","proto":"tls","name":"untimed","port":443,"decision":"deny"}"#;
        let arm = r#"{"event":"arm","time":"2026-01-01T00:00:02Z","sandbox":"s","programs":[]}"#;
        let a = format!(
            "{no_time}\n{}{arm}\nnot a log line\n{}{no_time}\n",
            rec(1, "a1"),
            rec(6, "a6")
        );
        let b = [rec(0, "b0"), rec(2, "b2"), rec(5, "b5")].concat();
        assert_eq!(
            order(&[&a, &b]),
            [
                // Before the first timed line of each input.
                "0:untimed",
                "1:b0",
                "0:a1",
                // Equal times: input order; the malformed line right after the arm.
                "0:arm",
                "0:?",
                "1:b2",
                "1:b5",
                "0:a6",
                "0:untimed",
            ]
        );
    }

    #[test]
    fn an_input_whose_times_go_backwards_keeps_its_order() {
        let a = [rec(5, "a5"), rec(1, "a1")].concat();
        let b = [rec(2, "b2")].concat();
        assert_eq!(order(&[&a, &b]), ["1:b2", "0:a5", "0:a1"]);
    }
}
