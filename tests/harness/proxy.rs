//! A userspace TCP fault proxy (this kernel has no netem), as etcd's robustness tests use.
//!
//! A [`Proxy`] listens on `n` consecutive ports and forwards port `base + i` to `target + i`
//! (a node's peer listeners are consecutive: shard N on peer port + N). It understands the
//! framing both Kahuna protocols share (`u32` little-endian length, then the frame), so faults
//! act on whole messages, as a lossy network acts on packets:
//!
//! * `blackhole_up` / `blackhole_down`: frames toward the target / back from it vanish, and the
//!   connection stays open (a silent network, not a closed port);
//! * `drop`: each frame vanishes with this probability;
//! * `delay_ms ± jitter_ms`: each frame is held that long; frames keep their order;
//! * `swallow_responses`: the next N frames back from the target vanish, then the connection is
//!   reset (an answer lost with its connection);
//! * [`Proxy::reset`]: cut every open connection now; `refuse`: close new ones at once.
//!
//! Threads, not async: a test proxy carries a handful of connections.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub blackhole_up: bool,
    pub blackhole_down: bool,
    /// Probability in [0, 1] that a frame is dropped.
    pub drop: f64,
    pub delay_ms: u64,
    pub jitter_ms: u64,
    pub refuse: bool,
    pub swallow_responses: usize,
}

impl Faults {
    pub fn is_clean(&self) -> bool {
        !self.blackhole_up
            && !self.blackhole_down
            && self.drop == 0.0
            && self.delay_ms == 0
            && self.jitter_ms == 0
            && !self.refuse
            && self.swallow_responses == 0
    }
}

struct Shared {
    faults: Mutex<Faults>,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
    rng: Mutex<u64>,
    /// Frames dropped or swallowed, and connections reset: what a scenario injected.
    injected: Mutex<u64>,
}

impl Shared {
    fn random(&self) -> f64 {
        let mut s = self.rng.lock().unwrap();
        // xorshift64*: enough for fault decisions, and replayable from the seed.
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn injected(&self) {
        *self.injected.lock().unwrap() += 1;
    }
}

pub struct Proxy {
    pub base: u16,
    pub ports: usize,
    shared: Arc<Shared>,
}

/// `n` consecutive free ports on 127.0.0.1, bound (so nobody else takes them meanwhile).
pub fn bind_consecutive(n: usize) -> (u16, Vec<TcpListener>) {
    for _ in 0..200 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        if base as usize + n > 65535 {
            continue;
        }
        let mut ls = vec![first];
        for i in 1..n {
            match TcpListener::bind(("127.0.0.1", base + i as u16)) {
                Ok(l) => ls.push(l),
                Err(_) => break,
            }
        }
        if ls.len() == n {
            return (base, ls);
        }
    }
    panic!("no {n} consecutive free ports");
}

impl Proxy {
    /// Forwards `base + i` to `127.0.0.1:target_base + i` for `i < n`.
    pub fn start(target_base: u16, n: usize, seed: u64) -> Proxy {
        let (base, listeners) = bind_consecutive(n);
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            rng: Mutex::new(seed | 1),
            injected: Mutex::new(0),
        });
        for (i, l) in listeners.into_iter().enumerate() {
            let target: SocketAddr = ([127, 0, 0, 1], target_base + i as u16).into();
            let shared = shared.clone();
            l.set_nonblocking(true).unwrap();
            std::thread::spawn(move || accept_loop(l, target, shared));
        }
        Proxy { base, ports: n, shared }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.base)
    }

    pub fn set(&self, f: Faults) {
        *self.shared.faults.lock().unwrap() = f;
    }

    pub fn update(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.shared.faults.lock().unwrap());
    }

    pub fn heal(&self) {
        self.set(Faults::default());
    }

    /// Cuts every open connection (both sides see a reset or EOF).
    pub fn reset(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.shared.injected();
    }

    /// Faults injected so far: frames dropped or swallowed, connections reset.
    pub fn injected(&self) -> u64 {
        *self.shared.injected.lock().unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.reset();
    }
}

fn accept_loop(l: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match l.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        if shared.faults.lock().unwrap().refuse {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut conns = shared.conns.lock().unwrap();
            conns.retain(|c| c.peer_addr().is_ok());
            conns.push(client.try_clone().unwrap());
            conns.push(server.try_clone().unwrap());
        }
        for (from, to, up) in [
            (client.try_clone().unwrap(), server.try_clone().unwrap(), true),
            (server, client, false),
        ] {
            let shared = shared.clone();
            std::thread::spawn(move || pump(from, to, up, shared));
        }
    }
}

/// Moves frames from `from` to `to` through the faults of one direction (`up` = toward the
/// target). A second thread delivers them at their release time, in order.
fn pump(mut from: TcpStream, to: TcpStream, up: bool, shared: Arc<Shared>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let (from2, to2) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    std::thread::spawn(move || deliver(rx, to2, from2));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut last_release = Instant::now();
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while buf.len() - start >= 4 {
            let len = u32::from_le_bytes(buf[start..start + 4].try_into().unwrap()) as usize;
            // Not a frame we understand (or a huge one): pass the bytes through as they come.
            let frame_end = if len > (64 << 20) { buf.len() } else { start + 4 + len };
            if frame_end > buf.len() {
                break;
            }
            let frame = buf[start..frame_end].to_vec();
            start = frame_end;
            let f = shared.faults.lock().unwrap().clone();
            let blackholed = if up { f.blackhole_up } else { f.blackhole_down };
            if blackholed || (f.drop > 0.0 && shared.random() < f.drop) {
                shared.injected();
                continue;
            }
            if !up && f.swallow_responses > 0 {
                let mut live = shared.faults.lock().unwrap();
                live.swallow_responses -= 1;
                let cut = live.swallow_responses == 0;
                drop(live);
                shared.injected();
                if cut {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                continue;
            }
            let mut delay = f.delay_ms as f64;
            if f.jitter_ms > 0 {
                delay += (shared.random() * 2.0 - 1.0) * f.jitter_ms as f64;
            }
            let release = Instant::now() + Duration::from_micros((delay.max(0.0) * 1000.0) as u64);
            last_release = last_release.max(release);
            if tx.send((last_release, frame)).is_err() {
                return;
            }
        }
        buf.drain(..start);
    }
    // End of stream: the delivery thread passes it on once the frames in flight are out.
}

fn deliver(rx: mpsc::Receiver<(Instant, Vec<u8>)>, mut to: TcpStream, from: TcpStream) {
    while let Ok((at, frame)) = rx.recv() {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if to.write_all(&frame).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
