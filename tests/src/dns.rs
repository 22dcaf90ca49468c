//! [`FakeDns`]: a DNS server on UDP port 53 inside an [`UpstreamNet`], speaking the real wire
//! format (hickory-proto). It answers `A`/`AAAA` for the names it was given, `NXDOMAIN` for
//! the rest, and remembers every question, so a test can prove a name was never looked up.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA},
    },
};

use crate::UpstreamNet;

/// A DNS server for tests; stops on drop.
pub struct FakeDns {
    addr: SocketAddr,
    questions: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeDns {
    /// Serves `records` (name, address) on `addr:53` inside `net`.
    pub fn start(net: &UpstreamNet, addr: IpAddr, records: &[(&str, IpAddr)]) -> Self {
        let netns = File::open(net.netns_path()).expect("opening the upstream netns");
        let records: Vec<(String, IpAddr)> = records
            .iter()
            .map(|(n, a)| (n.trim_end_matches('.').to_ascii_lowercase(), *a))
            .collect();
        let addr = SocketAddr::new(addr, 53);
        let questions = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (thread_questions, thread_stop) = (Arc::clone(&questions), Arc::clone(&stop));
        let thread = thread::Builder::new()
            .name(format!("fake dns {addr}"))
            .spawn(move || {
                if let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(format!("setns: {e}")));
                    return;
                }
                let socket = match UdpSocket::bind(addr) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("binding {addr}: {e}")));
                        return;
                    }
                };
                // The read timeout only bounds how long a stop request waits.
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("setting a read timeout");
                let _ = ready_tx.send(Ok(()));
                serve(&socket, &records, &thread_questions, &thread_stop);
            })
            .expect("spawning the fake DNS thread");
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("fake DNS on {addr} failed to start: {e}"),
            Err(e) => panic!("fake DNS on {addr} did not report readiness: {e}"),
        }
        Self {
            addr,
            questions,
            stop,
            thread: Some(thread),
        }
    }

    /// The server's address (`ADDR:53`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every question asked so far, as `name TYPE` (name lowercase, no trailing dot).
    pub fn questions(&self) -> Vec<String> {
        self.questions.lock().unwrap().clone()
    }

    /// How many questions named `name`.
    pub fn asked_about(&self, name: &str) -> usize {
        self.questions()
            .iter()
            .filter(|q| q.split(' ').next() == Some(name))
            .count()
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    socket: &UdpSocket,
    records: &[(String, IpAddr)],
    questions: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let mut response = Message::new(
            query.metadata.id,
            MessageType::Response,
            query.metadata.op_code,
        );
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        let mut known = false;
        for q in &query.queries {
            let name = q
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            questions
                .lock()
                .unwrap()
                .push(format!("{name} {}", q.query_type()));
            response.add_query(q.clone());
            for (_, addr) in records.iter().filter(|(n, _)| *n == name) {
                known = true;
                let rdata = match (addr, q.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                let owner = Name::from_ascii(format!("{name}.")).expect("a valid test name");
                response.add_answer(Record::from_rdata(owner, 60, rdata));
            }
        }
        if !known {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}
