//! Byte-exact transfers through both pass-through relays (`--relay kernel`, the in-kernel
//! sockmap relay, and `--relay splice`): every byte arrives, in order, each way; a
//! half-close in one direction never cuts the other; slow readers lose nothing; a reset on
//! either side is audited and leaves egressd healthy; and ten thousand small transfers in
//! a row all arrive intact.
//!
//! The client is `egressd-probe transfer` (and `transfers`) in the sandbox; the server is a
//! [`TransferUpstream`] in the scene's namespace; the protocol and the pattern are
//! `egressd_tests::transfer`'s: a real ClientHello (so the proxy passes the connection
//! through as TLS), the server's 8-byte greeting, the download size, then the pattern both
//! ways. Every case checks three witnesses against each other: the probe's counts and check,
//! the server's, and the proxy's audit record (`relay`, `bytes_up` = ClientHello + 8 +
//! upload, `bytes_down` = 8 + download).
//!
//! The client waits for the greeting before it sends more, as a TLS client waits for the
//! server's first flight: the in-kernel relay takes a connection over only after the
//! ClientHello went upstream, and relies on the client being quiet in that moment
//! (`proxy/src/transport/sockmap.rs`). [`eager_client`] covers clients that are not.
//! The record's `relay` must name the relay asked for, so a silent fallback from the kernel
//! relay to splice fails the kernel run; and `--relay kernel` makes egressd refuse to start
//! where the kernel cannot relay, which fails the kernel run loudly.
//!
//! Each case runs once per relay: `transfer::kernel::CASE` and `transfer::splice::CASE`.

use std::time::{Duration, Instant};

use egressd_tests::{
    Output, Scene, TransferUpstream,
    transfer::{CHUNK, SEED_DOWN, SEED_UP, ServerOptions, Sink, Source, TransferRecord},
};
use serde_json::Value;

use crate::text;

/// The TEST-NET address the sandbox dials (only the redirect makes it lead anywhere).
const FAKE_IP: &str = "192.0.2.10";
/// The plain transfer server's name (on `s.net.addr3():443`).
const TRANSFER: &str = "transfer.allowed.example";
/// The name of the server a case makes misbehave (on `s.net.addr4():443`).
const ODD: &str = "odd.allowed.example";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The relay a run asks for (`--relay`), as its audit records name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relay {
    Kernel,
    Splice,
}

impl Relay {
    fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Splice => "splice",
        }
    }
}

/// Each case as a test per relay: `kernel::CASE` and `splice::CASE`.
macro_rules! for_both_relays {
    ($($case:ident),* $(,)?) => {
        mod kernel {
            use egressd_tests::privileged;
            $(
                #[test]
                fn $case() {
                    if !privileged() {
                        return;
                    }
                    super::$case(super::Relay::Kernel);
                }
            )*
        }
        mod splice {
            use egressd_tests::privileged;
            $(
                #[test]
                fn $case() {
                    if !privileged() {
                        return;
                    }
                    super::$case(super::Relay::Splice);
                }
            )*
        }
    };
}

// Two kernel behaviours this suite caught, which the relay now works around: the segment
// that carries a FIN reached the verdict program empty and, redirected, broke the peer's
// send path (`EPIPE`: every connection ended "closed by reset", cutting the other
// direction); and the kernel hands a partly read segment to the program from its first
// byte, so an eager client's bytes behind the ClientHello reached the upstream twice.
for_both_relays!(
    sizes,
    one_gib_upload,
    one_gib_download,
    client_half_closes_first,
    server_half_closes_first,
    slow_client_reader,
    slow_server_reader,
    eager_client,
    client_resets_mid_upload,
    server_resets_mid_download,
    ten_thousand_transfers,
    idle_connection_is_cut_at_the_idle_timeout,
);

/// The scene with the transfer servers. Field order is drop order: servers first.
struct Bench {
    /// The plain server, [`TRANSFER`].
    plain: TransferUpstream,
    /// The misbehaving one, [`ODD`], if the case has one.
    odd: Option<TransferUpstream>,
    s: Scene,
}

impl Bench {
    fn new(odd: Option<ServerOptions>) -> Self {
        let s = Scene::new();
        let plain = TransferUpstream::start(&s.net, s.net.addr3());
        let odd = odd.map(|options| {
            TransferUpstream::start_with(
                &s.net,
                std::net::SocketAddr::new(s.net.addr4().into(), 443),
                options,
            )
        });
        Self { plain, odd, s }
    }

    fn odd(&self) -> &TransferUpstream {
        self.odd.as_ref().expect("this case has an odd server")
    }

    /// Runs the probe with `actions` in a sandbox relaying with `relay`; egressd must
    /// succeed (with `--relay kernel` it refuses to start where the kernel cannot relay).
    fn run(&self, relay: Relay, case: &str, actions: Vec<String>, timeout: Duration) -> Output {
        self.run_with(relay, case, actions, timeout, &[])
    }

    /// [`Bench::run`] with more arguments for egressd (a `--config`).
    fn run_with(
        &self,
        relay: Relay,
        case: &str,
        actions: Vec<String>,
        timeout: Duration,
        egressd_args: &[String],
    ) -> Output {
        let mut argv = vec![self.s.probe.display().to_string()];
        argv.extend(actions);
        let started = Instant::now();
        let out = self
            .s
            .egressd()
            .resolve(TRANSFER, self.s.net.addr3())
            .resolve(ODD, self.s.net.addr4())
            .allow(&format!("{TRANSFER},{ODD}"))
            .args(["--relay", relay.name()])
            .args(egressd_args)
            .timeout(timeout)
            .command(argv)
            .run();
        eprintln!(
            "transfer::{}::{case}: egressd exec ran {:.1} s",
            relay.name(),
            started.elapsed().as_secs_f64()
        );
        assert!(
            out.status.success(),
            "egressd exec --relay {} failed\n{}",
            relay.name(),
            brief(&out)
        );
        out
    }
}

/// A `transfer` action of the probe.
fn transfer(name: &str, up: u64, down: u64, flags: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "transfer".to_owned(),
        format!("{FAKE_IP}:443"),
        name.to_owned(),
        up.to_string(),
        down.to_string(),
    ];
    argv.extend(flags.iter().map(|f| (*f).to_owned()));
    argv
}

/// The probe's lines for `action`, in order.
fn lines(out: &Output, action: &str) -> Vec<Value> {
    out.json_lines()
        .into_iter()
        .filter(|l| l["action"] == action)
        .collect()
}

/// A JSON number; fails if it is not one.
#[track_caller]
fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// The run without its audit log (which can be megabytes): status, stdout, end of stderr.
fn brief(out: &Output) -> String {
    let stderr: Vec<&str> = out.stderr.lines().collect();
    let tail = stderr[stderr.len().saturating_sub(40)..].join("\n");
    let stdout: String = out.stdout.chars().take(20_000).collect();
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr (last 40 lines) ---\n{tail}",
        out.status,
        stdout.trim_end()
    )
}

/// The pass-through records of `name`.
fn records_for<'a>(audit: &'a [Value], name: &str) -> Vec<&'a Value> {
    audit
        .iter()
        .filter(|r| r["name"] == name && r["proto"] == "tls")
        .collect()
}

/// The audit record of the connection the probe made from `line["local"]`.
fn find_record<'a>(audit: &'a [Value], line: &Value) -> Result<&'a Value, String> {
    let local = text(&line["local"]);
    let found: Vec<&Value> = audit
        .iter()
        .filter(|r| text(&r["client"]) == local)
        .collect();
    match found[..] {
        [rec] => Ok(rec),
        _ => Err(format!(
            "{} audit records for the client {local}, not one",
            found.len()
        )),
    }
}

/// [`find_record`], or fail the test.
#[track_caller]
fn record_of<'a>(audit: &'a [Value], line: &Value, out: &Output) -> &'a Value {
    find_record(audit, line).unwrap_or_else(|e| panic!("{e} (the probe's line: {line})\n{out}"))
}

/// Whether the transfer of `line` went through whole: the probe sent `up` and received
/// `down` intact, both ends clean; the audit record of its connection is an allowed
/// pass-through of `name` through one of `relays`, with the exact byte counts
/// (ClientHello + 8 + `up` up, greeting 8 + `down` down) and a clean close; the server
/// `records` hold one that received `up` intact and sent `down`. `Err` says what was not.
fn whole(
    audit: &[Value],
    records: &[TransferRecord],
    relays: &[&str],
    name: &str,
    line: &Value,
    (up, down): (u64, u64),
) -> Result<(), String> {
    let mut wrong = Vec::new();
    if line["result"] != "ok" || line["intact"] != true {
        wrong.push("the probe's transfer was not intact");
    }
    if line["sent"] != up || line["received"] != down {
        wrong.push("the probe's counts are off");
    }
    if line["received_ok"] != true {
        wrong.push("the download arrived damaged");
    }
    if line["end"] != "eof" || line["write_end"] != "done" {
        wrong.push("the probe's ends were not clean");
    }
    let rec = find_record(audit, line)?;
    if rec["decision"] != "allow" || rec["proto"] != "tls" || rec["name"] != name {
        wrong.push("the record is not an allowed TLS pass-through of the name");
    }
    if !relays.iter().any(|r| rec["relay"] == *r) {
        wrong.push("the connection went through another relay");
    }
    let hello_len = line["hello_len"].as_u64().unwrap_or(0);
    if rec["bytes_up"] != hello_len + 8 + up || rec["bytes_down"] != 8 + down {
        wrong.push("the record's byte counts are off (ClientHello + 8 + up, 8 + down)");
    }
    if rec["reason"] != "in the allowlist" || !rec["failed"].is_null() {
        wrong.push("the relay did not end with a clean close on both sides");
    }
    if !records
        .iter()
        .any(|r| r.clean(up, down) && r.hello_len == hello_len)
    {
        wrong.push("no server record received the upload intact and sent the download");
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{up} up, {down} down: {}\n  probe: {line}\n  record: {rec}",
            wrong.join("; ")
        ))
    }
}

/// [`whole`] through `relay` exactly, or fail the test.
#[track_caller]
fn assert_whole(
    out: &Output,
    audit: &[Value],
    records: &[TransferRecord],
    relay: Relay,
    name: &str,
    line: &Value,
    pair: (u64, u64),
) {
    if let Err(e) = whole(audit, records, &[relay.name()], name, line, pair) {
        panic!(
            "--relay {}: {e}\n  server records: {records:?}\n{out}",
            relay.name()
        );
    }
}

/// Every transfer of the run (one per `expected` pair, in order) went through whole through
/// one of `relays`, and the audit log has exactly one pass-through record of `name` per
/// transfer. Fails with every transfer that was not, not just the first.
#[track_caller]
fn assert_all_whole(
    out: &Output,
    server: &TransferUpstream,
    relays: &[&str],
    name: &str,
    expected: &[(u64, u64)],
) {
    let lines = lines(out, "transfer");
    assert_eq!(lines.len(), expected.len(), "{}", brief(out));
    let records = server.wait_for(expected.len(), Duration::from_secs(30));
    let audit = out.audit();
    let failures: Vec<String> = lines
        .iter()
        .zip(expected)
        .filter_map(|(line, pair)| whole(&audit, &records, relays, name, line, *pair).err())
        .collect();
    assert!(
        failures.is_empty(),
        "relay {relays:?}: {} of {} transfers were not whole:\n{}\n  server records: \
         {records:#?}\n{out}",
        failures.len(),
        expected.len(),
        failures.join("\n")
    );
    assert_eq!(records.len(), expected.len(), "{records:#?}");
    assert_eq!(records_for(&audit, name).len(), expected.len(), "\n{out}");
}

/// Prints each transfer's time and rate.
fn report(relay: Relay, case: &str, out: &Output) {
    for line in lines(out, "transfer") {
        let ms = num(&line, "elapsed_ms").max(1);
        let bytes = num(&line, "sent") + num(&line, "received");
        eprintln!(
            "transfer::{}::{case}: up {} down {}: {ms} ms, {:.0} MiB/s",
            relay.name(),
            line["up"],
            line["down"],
            bytes as f64 / MIB as f64 / (ms as f64 / 1000.0)
        );
    }
}

/// Sizes: every pair of {0, 1, 4095, 64 KiB + 3, 1 MiB, 64 MiB} up and down, one
/// connection each, one after the other in one sandbox.
fn sizes(relay: Relay) {
    let b = Bench::new(None);
    const SIZES: [u64; 6] = [0, 1, 4095, 64 * KIB + 3, MIB, 64 * MIB];
    let mut actions = Vec::new();
    let mut expected = Vec::new();
    for up in SIZES {
        for down in SIZES {
            actions.extend(transfer(TRANSFER, up, down, &[]));
            expected.push((up, down));
        }
    }
    let out = b.run(relay, "sizes", actions, Duration::from_secs(600));
    report(relay, "sizes", &out);
    assert_all_whole(&out, &b.plain, &[relay.name()], TRANSFER, &expected);
}

/// One gibibyte up (the download empty).
fn one_gib_upload(relay: Relay) {
    let b = Bench::new(None);
    let actions = transfer(TRANSFER, GIB, 0, &[]);
    let out = b.run(relay, "one_gib_upload", actions, Duration::from_secs(600));
    report(relay, "one_gib_upload", &out);
    assert_all_whole(&out, &b.plain, &[relay.name()], TRANSFER, &[(GIB, 0)]);
}

/// One gibibyte down (the upload empty).
fn one_gib_download(relay: Relay) {
    let b = Bench::new(None);
    let actions = transfer(TRANSFER, 0, GIB, &[]);
    let out = b.run(relay, "one_gib_download", actions, Duration::from_secs(600));
    report(relay, "one_gib_download", &out);
    assert_all_whole(&out, &b.plain, &[relay.name()], TRANSFER, &[(0, GIB)]);
}

/// The client sends a little and half-closes at once, while the server is still sending
/// 64 MiB (to a client reading slowly): the client's FIN must not cut the download.
fn client_half_closes_first(relay: Relay) {
    let b = Bench::new(None);
    let down = 64 * MIB;
    let actions = transfer(TRANSFER, 1000, down, &["--slow-read-ms", "1"]);
    let out = b.run(
        relay,
        "client_half_closes_first",
        actions,
        Duration::from_secs(300),
    );
    report(relay, "client_half_closes_first", &out);
    assert_all_whole(&out, &b.plain, &[relay.name()], TRANSFER, &[(1000, down)]);
    // The server saw the client's end-of-file while it was still sending.
    let record = &b.plain.records()[0];
    let at = record
        .down_sent_at_up_eof
        .unwrap_or_else(|| panic!("the server saw no end-of-file: {record:?}"));
    assert!(
        at < down,
        "the client's FIN reached the server only after the whole download ({at} bytes): \
         the case did not overlap\n{out}"
    );
}

/// The server sends 1000 bytes and half-closes at once, while the client is still
/// uploading (to a server reading slowly): the upload must complete. Twice: the client
/// half-closing when done, then closing only after the server's FIN (`--no-shutdown`).
fn server_half_closes_first(relay: Relay) {
    let b = Bench::new(Some(ServerOptions {
        slow_read: Some(Duration::from_millis(1)),
        ..ServerOptions::default()
    }));
    // Both uploads are larger than what the sockets on the way buffer (the in-kernel relay's
    // send buffer alone is 8 MiB), so that the server's FIN must arrive mid-upload.
    let expected = [(64 * MIB, 1000), (32 * MIB, 1000)];
    let mut actions = transfer(ODD, expected[0].0, 1000, &[]);
    actions.extend(transfer(ODD, expected[1].0, 1000, &["--no-shutdown"]));
    let out = b.run(
        relay,
        "server_half_closes_first",
        actions,
        Duration::from_secs(300),
    );
    report(relay, "server_half_closes_first", &out);
    assert_all_whole(&out, b.odd(), &[relay.name()], ODD, &expected);
    for (line, (up, _)) in lines(&out, "transfer").iter().zip(expected) {
        let at = num(line, "sent_at_eof");
        assert!(
            at < up,
            "the server's FIN reached the client only after the whole upload: the case \
             did not overlap: {line}\n{out}"
        );
    }
}

/// The client reads 64 KiB, then pauses 2 ms, through an 8 MiB download.
fn slow_client_reader(relay: Relay) {
    let b = Bench::new(None);
    let actions = transfer(TRANSFER, 0, 8 * MIB, &["--slow-read-ms", "2"]);
    let out = b.run(
        relay,
        "slow_client_reader",
        actions,
        Duration::from_secs(300),
    );
    report(relay, "slow_client_reader", &out);
    assert_all_whole(&out, &b.plain, &[relay.name()], TRANSFER, &[(0, 8 * MIB)]);
}

/// The server reads 64 KiB, then pauses 2 ms, through an 8 MiB upload.
fn slow_server_reader(relay: Relay) {
    let b = Bench::new(Some(ServerOptions {
        slow_read: Some(Duration::from_millis(2)),
        ..ServerOptions::default()
    }));
    let actions = transfer(ODD, 8 * MIB, 0, &[]);
    let out = b.run(
        relay,
        "slow_server_reader",
        actions,
        Duration::from_secs(300),
    );
    report(relay, "slow_server_reader", &out);
    assert_all_whole(&out, b.odd(), &[relay.name()], ODD, &[(8 * MIB, 0)]);
    // At least 64 pauses (each after 64 KiB to 128 KiB): the server did read slowly.
    let took = b.odd().records()[0].elapsed;
    eprintln!(
        "transfer::{}::slow_server_reader: the server read for {} ms",
        relay.name(),
        took.as_millis()
    );
    assert!(took >= Duration::from_millis(128), "{took:?}");
}

/// What the kernel relay's audit reason says when bytes came while it took a connection
/// over, which it then fails rather than relay them out of order (`sockmap.rs`).
const HAND_OVER_FAILED: &str =
    "in the allowlist; relay failed: bytes arrived while the in-kernel relay was being set up";

/// A client that does not wait for the server (`--eager`: the download size and the
/// upload right behind the ClientHello, as TLS 1.3 early data is). This is outside the
/// in-kernel relay's hand-over contract (the client speaks while its socket is handed
/// over), so with `--relay kernel` each transfer must either go through whole (through
/// the kernel, or through splice, which takes a socket with bytes waiting behind the
/// ClientHello or one that already sent its FIN), or fail
/// loudly with [`HAND_OVER_FAILED`] having delivered no wrong byte either way. A wrong
/// byte, a miscount or a failure recorded as anything else fails the case. With
/// `--relay splice` every transfer must go through whole.
fn eager_client(relay: Relay) {
    let b = Bench::new(None);
    let expected = [
        (0, 0),
        (1, 4095),
        (4095, MIB),
        (MIB, 0),
        (64 * MIB, 64 * MIB),
    ];
    let mut actions = Vec::new();
    for (up, down) in expected {
        actions.extend(transfer(TRANSFER, up, down, &["--eager"]));
    }
    let out = b.run(relay, "eager_client", actions, Duration::from_secs(300));
    report(relay, "eager_client", &out);
    let lines = lines(&out, "transfer");
    assert_eq!(lines.len(), expected.len(), "{}", brief(&out));
    let records = b.plain.wait_for(expected.len(), Duration::from_secs(30));
    let audit = out.audit();
    let relays: &[&str] = match relay {
        Relay::Kernel => &["kernel", "splice"],
        Relay::Splice => &["splice"],
    };
    let mut failures = Vec::new();
    let mut refused = 0;
    for (line, pair) in lines.iter().zip(expected) {
        let Err(e) = whole(&audit, &records, relays, TRANSFER, line, pair) else {
            continue;
        };
        let loud = relay == Relay::Kernel
            && line["received_ok"] == true
            && find_record(&audit, line).is_ok_and(|r| {
                r["relay"] == "kernel" && text(&r["reason"]).starts_with(HAND_OVER_FAILED)
            });
        if loud {
            refused += 1;
        } else {
            failures.push(e);
        }
    }
    let damaged: Vec<&TransferRecord> = records.iter().filter(|r| !r.up_ok).collect();
    let taken: Vec<String> = records_for(&audit, TRANSFER)
        .iter()
        .map(|r| format!("{} {}/{}", r["relay"], r["bytes_up"], r["bytes_down"]))
        .collect();
    eprintln!(
        "transfer::{}::eager_client: relays taken {taken:?}, {refused} failed at the hand-over",
        relay.name()
    );
    assert!(
        failures.is_empty() && damaged.is_empty(),
        "relay {relays:?}: {} of {} eager transfers were neither whole nor refused at the \
         hand-over:\n{}\n  server records that received damaged bytes: {damaged:#?}\n  all \
         server records: {records:#?}\n{out}",
        failures.len(),
        expected.len(),
        failures.join("\n")
    );
    assert_eq!(records.len(), expected.len(), "{records:#?}");
    assert_eq!(
        records_for(&audit, TRANSFER).len(),
        expected.len(),
        "\n{out}"
    );
}

/// The audit record of a connection that ended by a reset: allowed, relayed by `relay`,
/// with the reset or failure in its reason.
#[track_caller]
fn assert_reset_record(rec: &Value, relay: Relay, out: &Output) {
    assert_eq!(rec["decision"], "allow", "{rec}\n{out}");
    assert_eq!(rec["relay"], relay.name(), "{rec}\n{out}");
    let reason = text(&rec["reason"]);
    assert!(
        reason.starts_with("in the allowlist; ")
            && (reason.contains("reset") || reason.contains("relay failed")),
        "the record of a reset connection should say so: {rec}\n{out}"
    );
}

/// The client resets its connection (`SO_LINGER` 0) after 1 MiB of a 64 MiB upload. The
/// server sees a reset or an early end-of-file with what it got intact, egressd records the
/// reset, and a transfer after it in the same sandbox goes through whole.
fn client_resets_mid_upload(relay: Relay) {
    let b = Bench::new(None);
    let mut actions = transfer(TRANSFER, 64 * MIB, 0, &["--reset-after", &MIB.to_string()]);
    actions.extend(transfer(TRANSFER, 1000, 1000, &[]));
    let out = b.run(
        relay,
        "client_resets_mid_upload",
        actions,
        Duration::from_secs(120),
    );
    let lines = lines(&out, "transfer");
    assert_eq!(lines.len(), 2, "\n{out}");
    let reset = &lines[0];
    assert_eq!(
        (num(reset, "sent"), text(&reset["write_end"])),
        (MIB, "aborted".to_owned()),
        "{reset}\n{out}"
    );
    let records = b.plain.wait_for(2, Duration::from_secs(30));
    let audit = out.audit();
    assert_whole(
        &out,
        &audit,
        &records,
        relay,
        TRANSFER,
        &lines[1],
        (1000, 1000),
    );
    let hello_len = num(reset, "hello_len");
    let rec = record_of(&audit, reset, &out);
    assert_reset_record(rec, relay, &out);
    assert!(
        num(rec, "bytes_up") <= hello_len + 8 + MIB,
        "more bytes went up than the client sent: {rec}\n{out}"
    );
    let server = records
        .iter()
        .find(|r| r.down_asked == 0)
        .unwrap_or_else(|| panic!("no server record of the reset connection: {records:#?}"));
    assert!(
        server.up_received <= MIB && server.up_ok,
        "the server got more than was sent, or damaged bytes: {server:?}\n{out}"
    );
    // A reset ends the connection at once, as a reset does: the bytes still on their way
    // through the proxy may be dropped with it, on either relay, down to the download size
    // itself (the server then ends before reading one). Never a wrong byte.
    assert!(
        matches!(
            server.up_end,
            egressd_tests::transfer::ReadEnd::Eof | egressd_tests::transfer::ReadEnd::Reset
        ) || (server.up_end == egressd_tests::transfer::ReadEnd::Aborted
            && server.up_received == 0),
        "{server:?}"
    );
    eprintln!(
        "transfer::{}::client_resets_mid_upload: record {:?}, server got {} bytes then {}",
        relay.name(),
        text(&rec["reason"]),
        server.up_received,
        server.up_end
    );
}

/// The server resets its connection after 1 MiB of a 64 MiB download. The client sees a
/// reset or an early end-of-file with what it got intact, egressd records the reset, and a
/// transfer after it in the same sandbox goes through whole.
fn server_resets_mid_download(relay: Relay) {
    let b = Bench::new(Some(ServerOptions {
        reset_after_down: Some(MIB),
        ..ServerOptions::default()
    }));
    let mut actions = transfer(ODD, 0, 64 * MIB, &[]);
    actions.extend(transfer(TRANSFER, 1000, 1000, &[]));
    let out = b.run(
        relay,
        "server_resets_mid_download",
        actions,
        Duration::from_secs(120),
    );
    let lines = lines(&out, "transfer");
    assert_eq!(lines.len(), 2, "\n{out}");
    let reset = &lines[0];
    let received = num(reset, "received");
    assert!(
        received <= MIB && reset["received_ok"] == true,
        "the client got more than the server sent, or damaged bytes: {reset}\n{out}"
    );
    assert!(
        ["eof", "reset"].contains(&text(&reset["end"]).as_str()),
        "{reset}\n{out}"
    );
    let odd = b.odd().wait_for(1, Duration::from_secs(30));
    assert_eq!(odd.len(), 1, "{odd:#?}");
    assert_eq!(
        (odd[0].down_sent, &odd[0].down_end),
        (MIB, &egressd_tests::transfer::WriteEnd::Aborted),
        "{odd:#?}"
    );
    let records = b.plain.wait_for(1, Duration::from_secs(30));
    let audit = out.audit();
    assert_whole(
        &out,
        &audit,
        &records,
        relay,
        TRANSFER,
        &lines[1],
        (1000, 1000),
    );
    let rec = record_of(&audit, reset, &out);
    assert_reset_record(rec, relay, &out);
    let bytes_down = num(rec, "bytes_down");
    assert!(
        8 + received <= bytes_down && bytes_down <= 8 + MIB,
        "the client got 8 + {received} bytes, the record says {bytes_down} went down of the \
         8 + {MIB} the server sent: {rec}\n{out}"
    );
    eprintln!(
        "transfer::{}::server_resets_mid_download: record {:?}, client got {received} bytes then {}",
        relay.name(),
        text(&rec["reason"]),
        reset["end"]
    );
}

/// Ten thousand transfers (100 bytes up, 1000 down), 64 at a time, through one sandbox: all
/// intact, each with its own pass-through record with the exact counts.
fn ten_thousand_transfers(relay: Relay) {
    const COUNT: u64 = 10_000;
    const UP: u64 = 100;
    const DOWN: u64 = 1000;
    let b = Bench::new(None);
    let actions = vec![
        "transfers".to_owned(),
        format!("{FAKE_IP}:443"),
        TRANSFER.to_owned(),
        COUNT.to_string(),
        "64".to_owned(),
        UP.to_string(),
        DOWN.to_string(),
    ];
    let out = b.run(
        relay,
        "ten_thousand_transfers",
        actions,
        Duration::from_secs(600),
    );
    let line = lines(&out, "transfers")
        .pop()
        .unwrap_or_else(|| panic!("no transfers line\n{}", brief(&out)));
    eprintln!(
        "transfer::{}::ten_thousand_transfers: {} ms in the probe",
        relay.name(),
        line["elapsed_ms"]
    );
    assert_eq!(
        (num(&line, "ok"), num(&line, "failed")),
        (COUNT, 0),
        "{line}\n{}",
        brief(&out)
    );
    let records = b.plain.wait_for(COUNT as usize, Duration::from_secs(60));
    assert_eq!(records.len() as u64, COUNT);
    let unclean: Vec<&TransferRecord> = records.iter().filter(|r| !r.clean(UP, DOWN)).collect();
    assert!(
        unclean.is_empty(),
        "{} server records not clean, first: {:?}",
        unclean.len(),
        unclean.first()
    );
    let hello_len = num(&line, "hello_len");
    let audit = out.audit();
    let passed = records_for(&audit, TRANSFER);
    assert_eq!(
        passed.len() as u64,
        COUNT,
        "pass-through records\n{}",
        brief(&out)
    );
    let wrong: Vec<&&Value> = passed
        .iter()
        .filter(|r| {
            r["decision"] != "allow"
                || r["relay"] != relay.name()
                || r["bytes_up"] != hello_len + 8 + UP
                || r["bytes_down"] != 8 + DOWN
                || r["reason"] != "in the allowlist"
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {COUNT} records are not a clean {} relay of {} bytes up and {} down; \
         the first: {}",
        wrong.len(),
        relay.name(),
        hello_len + 8 + UP,
        8 + DOWN,
        wrong[0]
    );
}

/// The pattern itself: a clean stream checks in any read sizes, and a flipped, lost,
/// duplicated or misplaced byte, or the other direction's bytes, are caught.
#[test]
fn the_pattern_catches_damage_of_every_kind() {
    fn pattern(seed: u64, len: u64) -> Vec<u8> {
        let mut source = Source::new(seed);
        let mut out = Vec::new();
        while (out.len() as u64) < len {
            let chunk = source.pending(len).to_vec();
            source.advance(chunk.len());
            out.extend_from_slice(&chunk);
        }
        out
    }
    fn feed(seed: u64, stream: &[u8], pieces: &[usize]) -> Sink {
        let mut sink = Sink::new(seed);
        let (mut at, mut i) = (0, 0);
        while at < stream.len() {
            let n = pieces[i % pieces.len()].min(stream.len() - at);
            sink.buffer(n)[..n].copy_from_slice(&stream[at..at + n]);
            sink.commit(n);
            at += n;
            i += 1;
        }
        sink
    }
    let len = 3 * CHUNK as u64 + 13;
    let good = pattern(SEED_UP, len);
    assert_eq!(good.len() as u64, len);
    assert_eq!(&good[8..16], &(1 ^ SEED_UP).to_le_bytes());
    for pieces in [&[1usize][..], &[3, 5, 7], &[CHUNK], &[CHUNK - 1, 9]] {
        let sink = feed(SEED_UP, &good, pieces);
        assert!(sink.intact(), "{pieces:?}: {:?}", sink.first_bad());
        assert_eq!(sink.offset(), len);
    }
    assert_eq!(feed(SEED_DOWN, &good, &[CHUNK]).first_bad(), Some(0));
    let mut flipped = good.clone();
    flipped[70_001] ^= 0x40;
    for pieces in [&[4096usize][..], &[1], &[3, 5, 7]] {
        assert_eq!(feed(SEED_UP, &flipped, pieces).first_bad(), Some(70_001));
    }
    let mut lost = good.clone();
    lost.remove(100_000);
    assert_eq!(feed(SEED_UP, &lost, &[777]).first_bad(), Some(100_000));
    let mut duplicated = good.clone();
    let word = duplicated[800..808].to_vec();
    duplicated.splice(808..808, word);
    let sink = feed(SEED_UP, &duplicated, &[CHUNK]);
    assert_eq!(
        (sink.first_bad(), sink.first_bad_origin()),
        (Some(808), Some(800))
    );
    let mut swapped = good.clone();
    swapped[1600..1616].rotate_left(8);
    let sink = feed(SEED_UP, &swapped, &[CHUNK]);
    assert_eq!(
        (sink.first_bad(), sink.first_bad_origin()),
        (Some(1600), Some(1608))
    );
    assert_eq!(feed(SEED_UP, &swapped, &[5]).first_bad(), Some(1600));
    // An eager client's stream: the greeting, then the pattern.
    let hello = egressd_tests::transfer::greeting(517);
    let greeted: Vec<u8> = hello.iter().chain(&good).copied().collect();
    for pieces in [&[1usize][..], &[3, 5, 7], &[CHUNK]] {
        let mut sink = Sink::with_preamble(SEED_UP, hello);
        let n = greeted.len();
        let mut at = 0;
        let mut i = 0;
        while at < n {
            let k = pieces[i % pieces.len()].min(n - at);
            sink.buffer(k)[..k].copy_from_slice(&greeted[at..at + k]);
            sink.commit(k);
            at += k;
            i += 1;
        }
        assert!(sink.intact(), "{pieces:?}: {:?}", sink.first_bad());
        assert_eq!(sink.payload(), len);
    }
    let mut sink = Sink::with_preamble(SEED_UP, egressd_tests::transfer::greeting(518));
    sink.buffer(64)[..64].copy_from_slice(&greeted[..64]);
    sink.commit(64);
    assert_eq!(sink.first_bad(), Some(7));
}

/// A relayed connection on which nothing moves for `timeouts.idle` (1 s here) is cut then,
/// with `; idle timeout` in its record, and not before: a pause shorter than the timeout
/// leaves the next transfer whole, and so does a reader draining its download for longer
/// than the timeout while the upstream says nothing. In the kernel relay no byte passes the proxy, so it
/// learns that nothing moved from the kernel's counts.
fn idle_connection_is_cut_at_the_idle_timeout(relay: Relay) {
    let b = Bench::new(None);
    let config =
        b.s.scratch
            .write("idle.toml", "[timeouts]\nidle = \"1s\"\n");
    let mut actions = transfer(TRANSFER, 1000, 1000, &["--idle-ms", "400"]);
    // A slow reader is not idle: the download reaches the relay at once and then drains for
    // about 3 s, 64 KiB per 100 ms, while the upstream is silent.
    actions.extend(transfer(TRANSFER, 0, 2 * MIB, &["--slow-read-ms", "100"]));
    actions.extend(transfer(TRANSFER, 1000, 1000, &["--idle-ms", "3000"]));
    let out = b.run_with(
        relay,
        "idle_connection_is_cut_at_the_idle_timeout",
        actions,
        Duration::from_secs(60),
        &["--config".to_owned(), config.display().to_string()],
    );
    let lines = lines(&out, "transfer");
    assert_eq!(lines.len(), 3, "\n{out}");
    let records = b.plain.wait_for(2, Duration::from_secs(30));
    let audit = out.audit();
    assert_whole(
        &out,
        &audit,
        &records,
        relay,
        TRANSFER,
        &lines[0],
        (1000, 1000),
    );
    assert_whole(
        &out,
        &audit,
        &records,
        relay,
        TRANSFER,
        &lines[1],
        (0, 2 * MIB),
    );
    assert!(
        num(&lines[1], "elapsed_ms") >= 2000,
        "the slow reader was not slow: {}\n{out}",
        lines[1]
    );
    let cut = &lines[2];
    assert_ne!(
        text(&cut["intact"]),
        "true",
        "the idle connection went on: {cut}\n{out}"
    );
    let rec = record_of(&audit, cut, &out);
    assert_eq!(rec["relay"], relay.name(), "{rec}\n{out}");
    assert!(
        text(&rec["reason"]).ends_with("; idle timeout"),
        "not cut by the idle timeout: {rec}\n{out}"
    );
    let lasted = num(rec, "duration_ms");
    assert!(
        (900..1800).contains(&lasted),
        "cut after {lasted} ms with a 1 s idle timeout: {rec}\n{out}"
    );
}
