//! Byte-exact transfers through a pass-through relay: the pattern both ends send and check,
//! the duplex pump both ends run, and [`TransferUpstream`], the server end.
//!
//! The protocol (plain TCP after a real TLS ClientHello, so the proxy classifies the
//! connection as TLS and passes it through; no TLS session follows):
//!
//! 1. the client sends a ClientHello (one TLS record);
//! 2. the server reads it and answers with a greeting: the record's length, 8 bytes
//!    big-endian ([`greeting`]). Like a TLS server's first flight, this is the server
//!    speaking first: a TLS client sends nothing more until it heard from the server;
//! 3. the client, once it has the greeting, sends the number of bytes it wants back (8 bytes,
//!    big-endian), then its upload, while it reads the download; an *eager* client sends
//!    them right behind the ClientHello instead, without waiting (as TLS 1.3 early data
//!    does), and takes the greeting as the first 8 bytes of what it reads;
//! 4. the server sends that many bytes while it reads the upload;
//! 5. each side half-closes (`shutdown(Write)`) once it sent everything, and reads on until
//!    end-of-file.
//!
//! So a relay moves ClientHello + 8 + upload bytes up and 8 + download bytes down.
//!
//! The bytes are a [pattern](Source): the 8-byte word at offset `8k` of a stream holds
//! `k ^ seed` (little-endian; a partial last word is its leading bytes), with one seed per
//! direction ([`SEED_UP`], [`SEED_DOWN`]). Every word differs from every other, so a byte
//! lost, duplicated, reordered or taken from the other direction anywhere shows as a
//! mismatch at a known offset ([`Sink`]). Both ends work on whole 64 KiB buffers of `u64`
//! words and keep O(1) memory, so a debug build moves a gibibyte in about a second of CPU.
//!
//! [`pump`] is one connection's transfer, on one thread with a non-blocking socket and
//! `poll(2)`: no second descriptor, so a reset (`SO_LINGER` 0, then close) is a reset.
//! `egressd-probe transfer` runs it as the client; [`TransferUpstream`] runs it for every
//! connection it accepts and records what it saw ([`TransferRecord`]).

use std::{
    fmt,
    fs::File,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::UpstreamNet;

/// The words are compared as native `u64`s: the pattern is little-endian.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "the transfer pattern is checked as native little-endian words"
);

/// The seed of the client -> server bytes.
pub const SEED_UP: u64 = 0x5550_5550_a5a5_0f0f;
/// The seed of the server -> client bytes.
pub const SEED_DOWN: u64 = 0x444f_574e_3c3c_f0f0;

/// Bytes per buffer: each side reads and writes at most this much per call.
pub const CHUNK: usize = 64 * 1024;
const WORDS: usize = CHUNK / 8;

/// A buffer of `CHUNK` bytes plus one word, aligned to 8 bytes.
struct Block {
    words: Box<[u64]>,
}

impl Block {
    fn new() -> Self {
        Self {
            words: vec![0u64; WORDS + 1].into_boxed_slice(),
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the words are initialised memory of exactly this many bytes, any byte
        // pattern is a valid u8, and the borrow of `self` keeps them alive and unaliased.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.words.len() * 8)
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the unique borrow of `self`; any bytes written make
        // valid u64s.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.words.as_mut_ptr().cast::<u8>(),
                self.words.len() * 8,
            )
        }
    }
}

/// The pattern's byte at stream offset `offset`.
fn pattern_byte(seed: u64, offset: u64) -> u8 {
    ((offset / 8) ^ seed).to_le_bytes()[(offset % 8) as usize]
}

/// The server's greeting for a ClientHello record of `hello_len` bytes (header included).
pub fn greeting(hello_len: u64) -> [u8; 8] {
    hello_len.to_be_bytes()
}

/// The sending side of the pattern: hands out the stream's bytes a buffer at a time.
pub struct Source {
    seed: u64,
    /// Bytes handed out and taken ([`Source::advance`]).
    offset: u64,
    block: Block,
    /// The stream offset of the block's first byte.
    block_start: u64,
    /// Valid bytes in the block (0 before the first fill).
    block_len: usize,
}

impl Source {
    /// The pattern of `seed` from offset 0.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            offset: 0,
            block: Block::new(),
            block_start: 0,
            block_len: 0,
        }
    }

    /// Bytes taken so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next bytes of the stream, up to offset `limit` (empty at `limit`).
    #[allow(
        clippy::explicit_counter_loop,
        reason = "in the debug builds the tests run, a counter beside the slice's iterator \
                  is three times faster than zipping it with a range"
    )]
    pub fn pending(&mut self, limit: u64) -> &[u8] {
        if self.offset >= limit {
            return &[];
        }
        if self.offset >= self.block_start + self.block_len as u64 {
            // Blocks are used up whole, so the next one starts on a block boundary.
            self.block_start = self.offset;
            let mut k = self.offset / 8;
            let seed = self.seed;
            for w in &mut self.block.words[..WORDS] {
                *w = k ^ seed;
                k += 1;
            }
            self.block_len = CHUNK;
        }
        let from = (self.offset - self.block_start) as usize;
        let to = (limit - self.block_start).min(self.block_len as u64) as usize;
        &self.block.bytes()[from..to]
    }

    /// Marks `n` bytes of [`Source::pending`] as sent.
    pub fn advance(&mut self, n: usize) {
        self.offset += n as u64;
    }
}

/// The receiving side of the pattern: checks the stream as it arrives, in O(1) memory.
/// The stream may start with a preamble of 8 known bytes (an eager client's greeting).
pub struct Sink {
    seed: u64,
    /// Known bytes before the pattern: none, or 8 (so the pattern's words stay aligned).
    preamble: Vec<u8>,
    /// Bytes received so far, the preamble included.
    offset: u64,
    first_bad: Option<u64>,
    /// Where the first wrong word belongs in the pattern, when it is one of its words.
    first_bad_origin: Option<u64>,
    /// Up to 16 bytes received from the first wrong one on.
    first_bad_bytes: Vec<u8>,
    block: Block,
}

impl Sink {
    /// A stream of the pattern of `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            preamble: Vec::new(),
            offset: 0,
            first_bad: None,
            first_bad_origin: None,
            first_bad_bytes: Vec::new(),
            block: Block::new(),
        }
    }

    /// A stream of `preamble`, then the pattern of `seed`.
    pub fn with_preamble(seed: u64, preamble: [u8; 8]) -> Self {
        Self {
            preamble: preamble.to_vec(),
            ..Self::new(seed)
        }
    }

    /// Bytes received so far, the preamble included.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Pattern bytes received so far (the preamble not counted).
    pub fn payload(&self) -> u64 {
        self.offset.saturating_sub(self.preamble.len() as u64)
    }

    /// Every byte so far was the one expected.
    pub fn intact(&self) -> bool {
        self.first_bad.is_none()
    }

    /// The offset of the first byte that was not (in the stream, the preamble included).
    pub fn first_bad(&self) -> Option<u64> {
        self.first_bad
    }

    /// When the first wrong byte was found in a whole word that is the pattern's word for
    /// another offset (bytes lost, duplicated or reordered, rather than altered): that
    /// offset, in the pattern (the preamble not counted). Compare it with [`Sink::first_bad`]
    /// less the preamble: smaller means the stream went back (a duplicate), larger that it
    /// skipped ahead (a loss).
    pub fn first_bad_origin(&self) -> Option<u64> {
        self.first_bad_origin
    }

    /// Up to 16 bytes received from the first wrong one on (as far as that read went).
    pub fn first_bad_bytes(&self) -> &[u8] {
        &self.first_bad_bytes
    }

    /// Where the next read goes (at most `max` bytes, at most [`CHUNK`]): placed so that its
    /// memory is aligned like the stream, so whole words compare as words.
    pub fn buffer(&mut self, max: usize) -> &mut [u8] {
        let start = (self.offset % 8) as usize;
        let len = max.min(CHUNK);
        &mut self.block.bytes_mut()[start..start + len]
    }

    /// Checks the `n` bytes just read into [`Sink::buffer`].
    pub fn commit(&mut self, n: usize) {
        let start = (self.offset % 8) as usize;
        let end = start + n;
        if self.first_bad.is_none() {
            self.first_bad = self.check(start, end);
            if let Some(bad) = self.first_bad {
                self.first_bad_origin = self.origin(start, end, bad);
                let from = start + usize::try_from(bad - self.offset).unwrap_or(end);
                let to = end.min(from.saturating_add(16));
                self.first_bad_bytes = self.block.bytes()[from.min(to)..to].to_vec();
            }
        }
        self.offset += n as u64;
    }

    /// The pattern offset the whole word holding stream offset `bad` (in buffer bytes
    /// `start..end`, stream offset `self.offset` at `start`) belongs at, if the word is in
    /// those bytes whole and looks like one of the pattern's (within 2^40 words of where it
    /// arrived).
    fn origin(&self, start: usize, end: usize, bad: u64) -> Option<u64> {
        let pre = self.preamble.len() as u64;
        let word_at = bad - bad % 8;
        if word_at < pre || word_at < self.offset {
            return None;
        }
        let pos = start + usize::try_from(word_at - self.offset).ok()?;
        if pos + 8 > end {
            return None;
        }
        let word = self.block.words[pos / 8];
        let origin = (word ^ self.seed).checked_mul(8)?;
        (origin.abs_diff(word_at - pre) < 1 << 43).then_some(origin)
    }

    /// The byte expected at stream offset `at`.
    fn expected(&self, at: u64) -> u8 {
        let pre = self.preamble.len() as u64;
        if at < pre {
            self.preamble[at as usize]
        } else {
            pattern_byte(self.seed, at - pre)
        }
    }

    /// The first stream offset in buffer bytes `start..end` (stream offset `self.offset` at
    /// `start`) that does not hold the byte expected.
    #[allow(
        clippy::explicit_counter_loop,
        reason = "in the debug builds the tests run, a counter beside the slice's iterator \
                  is three times faster than zipping it with a range"
    )]
    fn check(&self, start: usize, end: usize) -> Option<u64> {
        let seed = self.seed;
        let pre = self.preamble.len() as u64;
        let bytes = self.block.bytes();
        let at = |pos: usize| self.offset + (pos - start) as u64;
        let mut pos = start;
        // The preamble, and the partial word in front.
        while pos < end && (at(pos) < pre || !pos.is_multiple_of(8)) {
            if bytes[pos] != self.expected(at(pos)) {
                return Some(at(pos));
            }
            pos += 1;
        }
        // Whole words (the preamble is whole words, so the pattern's words are aligned).
        let (w0, w1) = (pos / 8, end / 8);
        if w0 < w1 {
            let k0 = (at(pos) - pre) / 8;
            let mut k = k0;
            for w in &self.block.words[w0..w1] {
                if *w != k ^ seed {
                    let word = (w0 + (k - k0) as usize) * 8;
                    let bad = (word..word + 8)
                        .find(|&p| bytes[p] != self.expected(at(p)))
                        .unwrap_or(word);
                    return Some(at(bad));
                }
                k += 1;
            }
            pos = w1 * 8;
        }
        // The partial word behind.
        while pos < end {
            if bytes[pos] != self.expected(at(pos)) {
                return Some(at(pos));
            }
            pos += 1;
        }
        None
    }
}

/// What one side of a connection does in [`pump`].
#[derive(Clone, Debug)]
pub struct Plan {
    /// Pattern bytes to send.
    pub send: u64,
    /// The seed of the bytes sent.
    pub send_seed: u64,
    /// The seed of the bytes expected.
    pub recv_seed: u64,
    /// The 8 bytes expected before the pattern (an eager client's greeting), if any.
    pub preamble: Option<[u8; 8]>,
    /// Pause this long after each 64 KiB read (a slow reader).
    pub slow_read: Option<Duration>,
    /// Reset the connection (`SO_LINGER` 0, close) once this many bytes are sent.
    pub reset_after_sent: Option<u64>,
    /// Reset the connection once this many bytes are received.
    pub reset_after_received: Option<u64>,
    /// `shutdown(Write)` once everything is sent (else the socket is only closed at the
    /// end, after the peer's end-of-file).
    pub shutdown_when_sent: bool,
    /// Give up after this long without a byte moving either way.
    pub idle: Duration,
}

impl Plan {
    /// Send `send` bytes of `send_seed`, expect `recv_seed`, half-close when done.
    pub fn new(send: u64, send_seed: u64, recv_seed: u64) -> Self {
        Self {
            send,
            send_seed,
            recv_seed,
            preamble: None,
            slow_read: None,
            reset_after_sent: None,
            reset_after_received: None,
            shutdown_when_sent: true,
            idle: Duration::from_secs(30),
        }
    }
}

/// How the read side of a [`pump`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The peer's end-of-file.
    Eof,
    /// `ECONNRESET`.
    Reset,
    /// This side reset the connection before the peer's end-of-file.
    Aborted,
    /// Nothing moved for the plan's idle time.
    Timeout,
    /// Another error.
    Error(String),
}

/// How the write side of a [`pump`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteEnd {
    /// Everything was sent (and the write side shut down, if the plan said so).
    Done,
    /// This side reset the connection (the plan's `reset_after_*`).
    Aborted,
    /// Nothing moved for the plan's idle time.
    Timeout,
    /// A write failed (`EPIPE`, `ECONNRESET`, ...).
    Error(String),
}

impl fmt::Display for ReadEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eof => f.write_str("eof"),
            Self::Reset => f.write_str("reset"),
            Self::Aborted => f.write_str("aborted"),
            Self::Timeout => f.write_str("timeout"),
            Self::Error(e) => write!(f, "error: {e}"),
        }
    }
}

impl fmt::Display for WriteEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Done => f.write_str("done"),
            Self::Aborted => f.write_str("aborted"),
            Self::Timeout => f.write_str("timeout"),
            Self::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// What one side of a connection saw in [`pump`].
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Pattern bytes sent (written into the socket).
    pub sent: u64,
    /// Pattern bytes received (a preamble not counted).
    pub received: u64,
    /// Every byte received was the one expected, in order (a preamble included).
    pub received_ok: bool,
    /// The offset of the first byte received that was not (a preamble included).
    pub first_bad: Option<u64>,
    /// Where the word holding that byte belongs in the pattern, if it is one of its words
    /// ([`Sink::first_bad_origin`]).
    pub first_bad_origin: Option<u64>,
    /// Up to 16 bytes received from that byte on.
    pub first_bad_bytes: Vec<u8>,
    /// How reading ended.
    pub read_end: ReadEnd,
    /// How writing ended.
    pub write_end: WriteEnd,
    /// Bytes sent when the peer's end-of-file arrived (a half-close while this side was
    /// still sending shows as less than the plan's `send`).
    pub sent_at_eof: Option<u64>,
    /// From the start of the pump to its end.
    pub elapsed: Duration,
}

impl Outcome {
    /// Sent `send`, received `expected` intact, both sides ended cleanly.
    pub fn clean(&self, send: u64, expected: u64) -> bool {
        self.sent == send
            && self.received == expected
            && self.received_ok
            && self.read_end == ReadEnd::Eof
            && self.write_end == WriteEnd::Done
    }
}

/// Runs one side of a transfer on `stream` (see the module doc): sends `plan.send` bytes of
/// the pattern while it reads and checks the peer's, until both directions ended, a reset,
/// or `plan.idle` without progress. The stream is closed (or reset) when it returns.
pub fn pump(stream: TcpStream, plan: &Plan) -> Outcome {
    let started = Instant::now();
    let mut source = Source::new(plan.send_seed);
    let mut sink = match plan.preamble {
        Some(preamble) => Sink::with_preamble(plan.recv_seed, preamble),
        None => Sink::new(plan.recv_seed),
    };
    let send_limit = plan
        .reset_after_sent
        .map_or(plan.send, |n| n.min(plan.send));
    let mut read_end: Option<ReadEnd> = None;
    let mut write_end: Option<WriteEnd> = None;
    let mut sent_at_eof = None;
    let mut last_progress = Instant::now();
    let mut paused_until: Option<Instant> = None;
    let mut since_pause = 0usize;
    let mut abort = false;
    if let Err(e) = stream.set_nonblocking(true) {
        read_end = Some(ReadEnd::Error(format!("set_nonblocking: {e}")));
        write_end = Some(WriteEnd::Error(format!("set_nonblocking: {e}")));
    }
    loop {
        if write_end.is_none() && source.offset() >= send_limit {
            if plan.reset_after_sent.is_some_and(|n| source.offset() >= n) {
                abort = true;
                break;
            }
            if plan.shutdown_when_sent
                && let Err(e) = stream.shutdown(Shutdown::Write)
            {
                write_end = Some(WriteEnd::Error(format!("shutdown: {e}")));
            }
            write_end.get_or_insert(WriteEnd::Done);
        }
        if plan
            .reset_after_received
            .is_some_and(|n| sink.offset() >= n)
        {
            abort = true;
            break;
        }
        if read_end.is_some() && write_end.is_some() {
            break;
        }
        let now = Instant::now();
        if paused_until.is_some_and(|t| now >= t) {
            paused_until = None;
        }
        let Some(idle_left) = plan.idle.checked_sub(now - last_progress) else {
            read_end.get_or_insert(ReadEnd::Timeout);
            write_end.get_or_insert(WriteEnd::Timeout);
            break;
        };
        let want_read = read_end.is_none() && paused_until.is_none();
        let want_write = write_end.is_none();
        let mut wait = idle_left;
        if let Some(t) = paused_until {
            wait = wait.min(t - now);
        }
        if !want_read && !want_write {
            // Only a pause is left: poll would report a hung-up socket at once, forever.
            thread::sleep(wait);
            continue;
        }
        let mut events: libc::c_short = 0;
        if want_read {
            events |= libc::POLLIN;
        }
        if want_write {
            events |= libc::POLLOUT;
        }
        let mut fds = [libc::pollfd {
            fd: stream.as_raw_fd(),
            events,
            revents: 0,
        }];
        let ms = libc::c_int::try_from(wait.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, its length given.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if rc == 0 {
            continue;
        }
        if want_read {
            let mut max = CHUNK;
            if let Some(n) = plan.reset_after_received {
                max = max.min(usize::try_from(n - sink.offset()).unwrap_or(usize::MAX));
            }
            match (&stream).read(sink.buffer(max)) {
                Ok(0) => {
                    read_end = Some(ReadEnd::Eof);
                    sent_at_eof = Some(source.offset());
                }
                Ok(n) => {
                    sink.commit(n);
                    last_progress = Instant::now();
                    since_pause += n;
                    if let Some(pause) = plan.slow_read
                        && since_pause >= CHUNK
                    {
                        since_pause = 0;
                        paused_until = Some(Instant::now() + pause);
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    read_end = Some(ReadEnd::Reset);
                }
                Err(e) => read_end = Some(ReadEnd::Error(e.to_string())),
            }
        }
        if want_write {
            let pending = source.pending(send_limit);
            match (&stream).write(pending) {
                Ok(n) => {
                    source.advance(n);
                    if n > 0 {
                        last_progress = Instant::now();
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => write_end = Some(WriteEnd::Error(e.to_string())),
            }
        }
    }
    if abort {
        reset(&stream);
        read_end.get_or_insert(ReadEnd::Aborted);
        write_end.get_or_insert(WriteEnd::Aborted);
    }
    drop(stream);
    Outcome {
        sent: source.offset(),
        received: sink.payload(),
        received_ok: sink.intact(),
        first_bad: sink.first_bad(),
        first_bad_origin: sink.first_bad_origin(),
        first_bad_bytes: sink.first_bad_bytes().to_vec(),
        read_end: read_end.unwrap_or(ReadEnd::Aborted),
        write_end: write_end.unwrap_or(WriteEnd::Aborted),
        sent_at_eof,
        elapsed: started.elapsed(),
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Makes the coming close of `stream` a reset (`SO_LINGER` on with a zero timeout).
pub fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &linger);
}

/// The ClientHello a rustls client sends for `sni` (one TLS record).
pub fn client_hello(sni: &str) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).map_err(|e| e.to_string())?;
    }
    Ok(hello)
}

/// How a [`TransferUpstream`] treats its connections beyond the protocol.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Pause this long after each 64 KiB of the upload read (a slow reader).
    pub slow_read: Option<Duration>,
    /// Reset each connection once this many bytes of the download are sent.
    pub reset_after_down: Option<u64>,
    /// Reset each connection once this many bytes of the upload are received.
    pub reset_after_up: Option<u64>,
}

/// What a [`TransferUpstream`] saw on one connection.
#[derive(Clone, Debug)]
pub struct TransferRecord {
    /// The ClientHello record's length, header included (0 if it never came whole).
    pub hello_len: u64,
    /// The download the client asked for.
    pub down_asked: u64,
    /// Upload bytes received (after the ClientHello and the 8-byte download size).
    pub up_received: u64,
    /// Every upload byte was the pattern's, in order.
    pub up_ok: bool,
    /// The offset of the first upload byte that was not.
    pub up_first_bad: Option<u64>,
    /// Where the word holding it belongs in the upload, if it is one of the pattern's
    /// (bytes misplaced rather than altered).
    pub up_first_bad_origin: Option<u64>,
    /// Up to 16 bytes received from the first wrong one on.
    pub up_first_bad_bytes: Vec<u8>,
    /// How the upload ended.
    pub up_end: ReadEnd,
    /// Download bytes sent (after the greeting).
    pub down_sent: u64,
    /// How the download ended.
    pub down_end: WriteEnd,
    /// Download bytes sent when the upload's end-of-file arrived.
    pub down_sent_at_up_eof: Option<u64>,
    /// How long the transfer took, from the download size's arrival to the end.
    pub elapsed: Duration,
    /// What went wrong before the transfer (the ClientHello or the request), if anything.
    pub error: Option<String>,
}

impl TransferRecord {
    /// Received `up` intact and sent `down`, both directions ended cleanly.
    pub fn clean(&self, up: u64, down: u64) -> bool {
        self.error.is_none()
            && self.down_asked == down
            && self.up_received == up
            && self.up_ok
            && self.up_end == ReadEnd::Eof
            && self.down_sent == down
            && self.down_end == WriteEnd::Done
    }
}

/// The records and the condition variable their waiters wait on.
#[derive(Default)]
struct Records {
    list: Mutex<Vec<TransferRecord>>,
    grew: Condvar,
}

/// A transfer server on `ADDR:PORT` inside an [`UpstreamNet`]: one thread accepting, one
/// per connection running [`pump`] (see the module doc). Every connection leaves a
/// [`TransferRecord`] once it ends.
pub struct TransferUpstream {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    connections: Arc<AtomicUsize>,
    records: Arc<Records>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TransferUpstream {
    /// Serve transfers on `addr:443` in `net`.
    pub fn start(net: &UpstreamNet, addr: impl Into<IpAddr>) -> Self {
        Self::start_with(
            net,
            SocketAddr::new(addr.into(), 443),
            ServerOptions::default(),
        )
    }

    /// Serve transfers on `addr` in `net`, treating connections as `options` says.
    pub fn start_with(net: &UpstreamNet, addr: SocketAddr, options: ServerOptions) -> Self {
        let netns = File::open(net.netns_path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", net.netns_path().display()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Arc<TcpListener>, String>>();
        let connections = Arc::new(AtomicUsize::new(0));
        let records = Arc::new(Records::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_connections, thread_records, thread_stop) = (
            Arc::clone(&connections),
            Arc::clone(&records),
            Arc::clone(&stop),
        );
        let thread = thread::Builder::new()
            .name(format!("transfer {addr}"))
            .spawn(move || {
                // This thread, and the connection threads it starts, live in the namespace.
                if let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(format!("setns: {e}")));
                    return;
                }
                drop(netns);
                let listener = match listen(addr) {
                    Ok(l) => Arc::new(l),
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("binding {addr}: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(Arc::clone(&listener)));
                accept_loop(
                    &listener,
                    &options,
                    &thread_connections,
                    &thread_records,
                    &thread_stop,
                );
            })
            .expect("spawning a transfer upstream thread");
        let listener = match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(listener)) => listener,
            Ok(Err(e)) => panic!("transfer upstream {addr} failed to start: {e}"),
            Err(e) => panic!("transfer upstream {addr} did not report readiness: {e}"),
        };
        Self {
            addr,
            listener,
            connections,
            records,
            stop,
            thread: Some(thread),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The records of the connections that ended so far, in the order they ended.
    pub fn records(&self) -> Vec<TransferRecord> {
        self.records
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `n` connections ended, or `timeout`; returns the records then
    /// (fewer than `n` if the time ran out).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<TransferRecord> {
        let list = self
            .records
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (list, _) = self
            .records
            .grew
            .wait_timeout_while(list, timeout, |list| list.len() < n)
            .unwrap_or_else(PoisonError::into_inner);
        list.clone()
    }
}

impl Drop for TransferUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Shutting a listening socket down wakes its blocked accept() (EINVAL).
        // SAFETY: shutdown(2) on a descriptor `self.listener` keeps open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A listener on `addr` with a deep accept queue.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // Listening again only changes the backlog.
    // SAFETY: listen(2) on the listener's own descriptor.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

fn accept_loop(
    listener: &TcpListener,
    options: &ServerOptions,
    connections: &Arc<AtomicUsize>,
    records: &Arc<Records>,
    stop: &AtomicBool,
) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, _)) = accepted else {
            continue;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        let (options, records) = (options.clone(), Arc::clone(records));
        let spawned = thread::Builder::new()
            .name("transfer conn".to_owned())
            .spawn(move || {
                let record = serve(stream, &options);
                let mut list = records.list.lock().unwrap_or_else(PoisonError::into_inner);
                list.push(record);
                records.grew.notify_all();
            });
        if let Err(e) = spawned {
            eprintln!("transfer upstream: spawning a connection thread: {e}");
        }
    }
}

/// One connection: the ClientHello, the request, then the transfer.
fn serve(mut stream: TcpStream, options: &ServerOptions) -> TransferRecord {
    let mut record = TransferRecord {
        hello_len: 0,
        down_asked: 0,
        up_received: 0,
        up_ok: true,
        up_first_bad: None,
        up_first_bad_origin: None,
        up_first_bad_bytes: Vec::new(),
        up_end: ReadEnd::Aborted,
        down_sent: 0,
        down_end: WriteEnd::Aborted,
        down_sent_at_up_eof: None,
        elapsed: Duration::ZERO,
        error: None,
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut header = [0u8; 5];
    if let Err(e) = stream.read_exact(&mut header) {
        record.error = Some(format!("reading the TLS record header: {e}"));
        return record;
    }
    if header[0] != 0x16 {
        record.error = Some(format!("not a TLS handshake record: {header:02x?}"));
        return record;
    }
    let body_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut body = vec![0u8; body_len];
    if let Err(e) = stream.read_exact(&mut body) {
        record.error = Some(format!("reading the ClientHello ({body_len} bytes): {e}"));
        return record;
    }
    record.hello_len = 5 + body_len as u64;
    if let Err(e) = stream.write_all(&greeting(record.hello_len)) {
        record.error = Some(format!("sending the greeting: {e}"));
        return record;
    }
    let mut asked = [0u8; 8];
    if let Err(e) = stream.read_exact(&mut asked) {
        record.error = Some(format!("reading the download size: {e}"));
        return record;
    }
    record.down_asked = u64::from_be_bytes(asked);
    let plan = Plan {
        slow_read: options.slow_read,
        reset_after_sent: options.reset_after_down,
        reset_after_received: options.reset_after_up,
        ..Plan::new(record.down_asked, SEED_DOWN, SEED_UP)
    };
    let out = pump(stream, &plan);
    record.up_received = out.received;
    record.up_ok = out.received_ok;
    record.up_first_bad = out.first_bad;
    record.up_first_bad_origin = out.first_bad_origin;
    record.up_first_bad_bytes = out.first_bad_bytes;
    record.up_end = out.read_end;
    record.down_sent = out.sent;
    record.down_end = out.write_end;
    record.down_sent_at_up_eof = out.sent_at_eof;
    record.elapsed = out.elapsed;
    record
}
