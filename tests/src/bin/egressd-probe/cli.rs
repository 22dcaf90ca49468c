//! The command line: argv cut into one segment per action, each parsed by clap.
//!
//! A segment is an action's name, then as many arguments as the action has positionals, taken
//! as they are (`socket vsock` and `tiocsti tcp` are one action each, and an argument may
//! start with `-`), then any of its flags (`--v6only-mapped`, each at most once; a flag with
//! a value, such as `--reset-after BYTES`, takes the next word as it is). clap is
//! handed the name, the flags, `--`, then the positionals. A word that is no action's name is
//! handed to clap with everything after it, which rejects it.
//!
//! Numbers and URLs are kept as strings: an argument the action cannot use is an `error` line
//! of that action (stage `parse`), as it always was, not a usage error.

use std::iter;

use clap::{Command, CommandFactory as _, Parser};

/// The name clap shows in its usage and errors.
const PROGRAM: &str = "egressd-probe";

/// One action of the probe and its arguments (see the crate doc).
#[derive(Debug, Parser)]
#[command(
    name = PROGRAM,
    about = "Network actions run inside an egressd sandbox, one JSON line each.",
    override_usage = "egressd-probe ACTION [ARGS]... [ACTION [ARGS]...]...",
    after_help = "Several actions may follow one another on one command line.",
    disable_help_flag = true,
    disable_help_subcommand = true
)]
pub enum Action {
    /// Connect; print the result and getpeername()
    Tcp {
        /// The address to connect to.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
        /// Dial an IPv4 target as `::ffff:a.b.c.d` from an `AF_INET6` socket.
        #[arg(long)]
        v6only_mapped: bool,
    },
    /// Unconnected sendto()
    Udp {
        /// Where the datagram goes.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
    },
    /// Connect, then send()
    UdpConnect {
        /// Where the datagram goes.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
    },
    /// Echo request via a ping socket and a raw socket
    Icmp {
        /// The IPv4 address to ping.
        #[arg(value_name = "ADDR")]
        target: String,
    },
    /// sendto(MSG_FASTOPEN): connect and data in one call
    TcpFastopen {
        /// The address to connect to.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
    },
    /// Connect to 127.0.0.1:1 (refused), AF_UNSPEC, then ADDR:PORT
    TcpReconnect {
        /// The address of the second connect.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
    },
    /// Connect through io_uring (IORING_OP_CONNECT)
    IoUringConnect {
        /// The address to connect to.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
    },
    /// SCTP connect
    Sctp {
        /// The address to connect to.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
    },
    /// AF_PACKET socket
    Packet {
        /// The interface (reported only).
        #[arg(value_name = "IFACE")]
        iface: String,
    },
    /// Raw IPv4 socket (IPPROTO_RAW), one packet
    Raw {
        /// The IPv4 address the packet goes to.
        #[arg(value_name = "ADDR")]
        target: String,
    },
    /// One DNS query over UDP (unconnected socket)
    Dns {
        /// The resolver.
        #[arg(value_name = "SERVER:PORT")]
        server: String,
        /// The name asked about.
        #[arg(value_name = "NAME")]
        name: String,
        /// A, MX, TXT, AAAA, SRV, HTTPS or ANY.
        #[arg(value_name = "TYPE")]
        rtype: String,
    },
    /// One DNS query over TCP
    DnsTcp {
        /// The resolver.
        #[arg(value_name = "SERVER:PORT")]
        server: String,
        /// The name asked about.
        #[arg(value_name = "NAME")]
        name: String,
        /// A, MX, TXT, AAAA, SRV, HTTPS or ANY.
        #[arg(value_name = "TYPE")]
        rtype: String,
    },
    /// GET a server-sent event stream; each event's arrival time
    Sse {
        /// `https://HOST[:PORT]/PATH`.
        #[arg(value_name = "URL")]
        url: String,
    },
    /// WebSocket handshake, send MESSAGE, read the echo
    Websocket {
        /// `wss://HOST[:PORT]/PATH`.
        #[arg(value_name = "URL")]
        url: String,
        /// The text message to send.
        #[arg(value_name = "MESSAGE")]
        message: String,
    },
    /// One TLS+h2 connection: GET the URL, then the same path with `:authority` OTHER_HOST
    H2Authorities {
        /// `https://HOST[:PORT]/PATH`.
        #[arg(value_name = "URL")]
        url: String,
        /// The `:authority` of the second request.
        #[arg(value_name = "OTHER_HOST")]
        other_host: String,
    },
    /// One TLS+h2 connection: GET the URL, then wait silently for the server to close it
    H2Idle {
        /// `https://HOST[:PORT]/PATH`.
        #[arg(value_name = "URL")]
        url: String,
        /// How long to wait, in seconds.
        #[arg(value_name = "WAIT_S")]
        wait_s: String,
    },
    /// A slow client
    Slow {
        /// The server.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
        /// The bytes to send, in hex.
        #[arg(value_name = "HEX")]
        hex: String,
        /// The pause after each byte (0: all at once).
        #[arg(value_name = "DRIP_MS")]
        drip_ms: String,
        /// How long to wait for the server to close, in seconds.
        #[arg(value_name = "WAIT_S")]
        wait_s: String,
    },
    /// N idle connections held open
    Hold {
        /// The server.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
        /// How many connections.
        #[arg(value_name = "N")]
        n: String,
        /// How long to hold them, in milliseconds.
        #[arg(value_name = "WAIT_MS")]
        wait_ms: String,
    },
    /// N concurrent HTTP requests per round
    Load {
        /// The server.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
        /// The `Host` of the requests.
        #[arg(value_name = "HOST")]
        host: String,
        /// Connections per round.
        #[arg(value_name = "N")]
        n: String,
        /// How many rounds.
        #[arg(value_name = "ROUNDS")]
        rounds: String,
    },
    /// N kept-alive connections, requests for SECONDS
    Sustain {
        /// The server.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
        /// The `Host` of the requests.
        #[arg(value_name = "HOST")]
        host: String,
        /// How many connections.
        #[arg(value_name = "N")]
        n: String,
        /// How long to keep sending, in seconds.
        #[arg(value_name = "SECONDS")]
        seconds: String,
    },
    /// One byte-exact transfer through the relay (see `transfer.rs`)
    Transfer {
        /// The server.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
        /// The name in the ClientHello.
        #[arg(value_name = "SNI")]
        sni: String,
        /// Bytes to upload.
        #[arg(value_name = "UP")]
        up: String,
        /// Bytes to download.
        #[arg(value_name = "DOWN")]
        down: String,
        /// Pause N ms after each 64 KiB read.
        #[arg(long, value_name = "N")]
        slow_read_ms: Option<String>,
        /// Reset the connection once BYTES of the upload are sent.
        #[arg(long, value_name = "BYTES")]
        reset_after: Option<String>,
        /// Close instead of half-closing once the upload is sent.
        #[arg(long)]
        no_shutdown: bool,
        /// Send the download size and the upload without waiting for the server's greeting.
        #[arg(long)]
        eager: bool,
        /// Stay silent N ms after the greeting before sending the download size (the
        /// connection sits idle, handed over to the relay).
        #[arg(long, value_name = "N")]
        idle_ms: Option<String>,
    },
    /// COUNT byte-exact transfers, CONCURRENCY at a time
    Transfers {
        /// The server.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
        /// The name in the ClientHello.
        #[arg(value_name = "SNI")]
        sni: String,
        /// How many transfers.
        #[arg(value_name = "COUNT")]
        count: String,
        /// How many at a time.
        #[arg(value_name = "CONCURRENCY")]
        concurrency: String,
        /// Bytes to upload in each.
        #[arg(value_name = "UP")]
        up: String,
        /// Bytes to download in each.
        #[arg(value_name = "DOWN")]
        down: String,
    },
    /// Unix stream connect (`@name`: abstract name)
    UnixConnect {
        /// The socket's path, or `@name`.
        #[arg(value_name = "PATH")]
        path: String,
    },
    /// One datagram from an unconnected Unix socket
    UnixSendto {
        /// The socket's path, or `@name`.
        #[arg(value_name = "PATH")]
        path: String,
    },
    /// AF_VSOCK connect
    Vsock {
        /// The context id and port.
        #[arg(value_name = "CID:PORT")]
        target: String,
    },
    /// socket() of another family
    Socket {
        /// A family's number or name.
        #[arg(value_name = "FAMILY")]
        family: String,
    },
    /// Push TEXT into the terminal on stdin
    Tiocsti {
        /// The bytes to push.
        #[arg(value_name = "TEXT")]
        text: String,
    },
    /// The session keyring's id (no target)
    Keyctl,
    /// A one-entry BPF array map (no target)
    Bpf,
}

impl Action {
    /// Parses the action at the head of `args` (argv without the program name); returns it
    /// and the arguments after its segment. With `args` empty, or wrong arguments, the error
    /// is clap's usage error.
    pub fn parse_next(args: &[String]) -> Result<(Self, &[String]), clap::Error> {
        let command = Self::command();
        let Some((name, after)) = args.split_first() else {
            return Self::try_parse_from([PROGRAM]).map(|action| (action, args));
        };
        let Some(sub) = command.find_subcommand(name) else {
            let argv = iter::once(PROGRAM).chain(args.iter().map(String::as_str));
            return Self::try_parse_from(argv).map(|action| (action, &args[args.len()..]));
        };
        let arity = sub.get_positionals().count();
        let (values, mut rest) = after.split_at(arity.min(after.len()));
        let mut seen = Vec::new();
        let mut flags = Vec::new();
        while let Some((arg, more)) = rest.split_first()
            && let Some(takes_value) = flag(sub, arg)
            && !seen.contains(&arg.as_str())
        {
            seen.push(arg.as_str());
            rest = more;
            // A flag with a value takes the next word, whatever it looks like.
            match rest.split_first() {
                Some((value, more)) if takes_value => {
                    flags.push(format!("{arg}={value}"));
                    rest = more;
                }
                _ => flags.push(arg.clone()),
            }
        }
        let argv = [PROGRAM, name.as_str()]
            .into_iter()
            .chain(flags.iter().map(String::as_str))
            .chain(["--"])
            .chain(values.iter().map(String::as_str));
        Self::try_parse_from(argv).map(|action| (action, rest))
    }
}

/// If `arg` is `--LONG` of one of `sub`'s flags: whether that flag takes a value.
fn flag(sub: &Command, arg: &str) -> Option<bool> {
    let long = arg.strip_prefix("--")?;
    sub.get_arguments()
        .find(|a| !a.is_positional() && a.get_long() == Some(long))
        .map(|a| a.get_action().takes_values())
}
