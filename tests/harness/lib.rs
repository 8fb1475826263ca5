//! The black-box test harness: real `kahuna-server` processes on 127.0.0.1, each with its own
//! data directory, stopped by PID and cleaned up when the test ends, however it ends.
//!
//! Every test calls [`watchdog`] first: if the test overruns its bound, the watchdog kills every
//! server it started and fails the run, so nothing is left behind and nothing hangs CI.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use kahuna_client::blocking::Client;
pub use kahuna_client::{ClientOptions, ClusterStatus, Durability, ErrorCode};

static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static SEQ: AtomicU64 = AtomicU64::new(0);

/// A built binary of the workspace (`make test` builds them before the tests run).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn kill(pid: u32) {
    // SAFETY: sending a signal to a process we started; no memory is involved.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Fails the test run and kills every server if the test is still running after `limit`.
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("watchdog: test exceeded {limit:?}; killing servers");
        for pid in PIDS.lock().unwrap().iter() {
            kill(*pid);
        }
        std::process::exit(101);
    });
}

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Server {
    /// Starts a node on a free port with a fresh data directory; extra flags follow.
    pub fn start(extra: &[&str]) -> Server {
        let mut s = Self::launch(extra);
        s.wait_ready();
        s
    }

    /// Starts a node without waiting for it to serve (a cluster member needs its peers first).
    pub fn launch(extra: &[&str]) -> Server {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let data_dir = std::env::temp_dir().join(format!("kahuna-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut s = Server {
            child: None,
            port: free_port(),
            log: data_dir.with_extension("log"),
            data_dir,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn_process();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn_process(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(bin("kahuna-server"))
            .arg("--listen")
            .arg(self.endpoint())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting kahuna-server");
        PIDS.lock().unwrap().push(child.id());
        self.child = Some(child);
    }

    /// Waits until the node answers a read, or fails with its log.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("kahuna-server exited with {status}:\n{}", self.log_text());
            }
            if let Ok(c) = self.client_with_timeout(Duration::from_millis(500)) {
                if c.lock_get(b"__ready", Durability::Persistent).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kahuna-server did not become ready:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        self.client_with_timeout(Duration::from_secs(10)).expect("connecting")
    }

    pub fn client_with_timeout(&self, timeout: Duration) -> Result<Client, kahuna_client::Error> {
        Client::connect(&[self.endpoint()], ClientOptions { timeout, ..ClientOptions::default() })
    }

    /// True unless the test killed it.
    pub fn child_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(c.id());
            let _ = c.wait();
        }
    }

    /// Starts the node again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_process();
        self.wait_ready();
    }

    /// Starts a killed node again without waiting (a cluster member may need its peers).
    pub fn relaunch(&mut self) {
        self.kill9();
        self.spawn_process();
    }

    /// Runs `kahuna-cli` against this node; `args` may put global flags anywhere.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("kahuna-cli"))
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .output()
            .expect("running kahuna-cli")
    }

    /// Runs `kahuna-cli ... --output json` and parses its single line of output.
    pub fn cli_json(&self, args: &[&str]) -> (bool, serde_json::Value) {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(&all);
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "bad JSON from kahuna-cli {args:?}: {e}: {text:?} {:?}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), v)
    }

    /// The WAL segment files of every shard.
    pub fn wal_segments(&self) -> usize {
        let mut n = 0;
        for shard in std::fs::read_dir(&self.data_dir).unwrap().flatten() {
            if let Ok(rd) = std::fs::read_dir(shard.path().join("wal")) {
                n += rd
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .count();
            }
        }
        n
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("server log kept at {}", self.log.display());
        }
    }
}

/// `n` nodes of one cluster on 127.0.0.1, one shard each, unpinned (they share the cores).
pub fn start_cluster(n: usize, extra: &[&str]) -> Vec<Server> {
    let peers: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let initial = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Server> = (0..n)
        .map(|i| {
            let id = (i + 1).to_string();
            let mut args = vec![
                "--id",
                id.as_str(),
                "--initial-cluster",
                initial.as_str(),
                "--shards",
                "1",
                "--no-pin",
            ];
            args.extend_from_slice(extra);
            Server::launch(&args)
        })
        .collect();
    for s in &mut nodes {
        s.wait_ready();
    }
    nodes
}

/// A client bound to one node: no leader routing, so every request enters through that node.
pub fn client_via(s: &Server, timeout_ms: u64) -> Client {
    let opts = ClientOptions {
        timeout: Duration::from_millis(timeout_ms),
        route_to_leaders: false,
        ..Default::default()
    };
    Client::connect(&[s.endpoint()], opts).unwrap()
}

pub fn status(s: &Server, checksums: bool) -> ClusterStatus {
    client_via(s, 10_000).cluster_status(checksums).unwrap()
}

/// The node leading the partition of `key`, waiting for one to be elected.
pub fn leader_of(s: &Server, key: &[u8]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(s, false);
        if let Some(l) = st.locate(key).and_then(|p| p.leader()) {
            return l.node;
        }
        assert!(Instant::now() < deadline, "no leader for {key:?}: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every partition is led by the first replica of its placement (the spread the
/// rebalancer keeps), through `s`.
pub fn wait_for_preferred_leaders(s: &Server, within: Duration) -> ClusterStatus {
    let deadline = Instant::now() + within;
    loop {
        let st = status(s, false);
        let settled =
            st.partitions.iter().all(|p| p.leader().map(|l| l.node) == p.replicas.first().copied());
        if settled {
            return st;
        }
        assert!(Instant::now() < deadline, "leaders did not go back to their placement: {st:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the replicas of every partition are at the same applied index, then checks that
/// their key ranges have equal checksums there.
pub fn assert_replicas_equal(s: &Server, replicas: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(s, true);
        let converged = st.partitions.iter().all(|p| {
            p.status.len() == replicas
                && p.status.iter().all(|r| r.checksum_index == p.status[0].checksum_index)
        });
        if converged {
            for p in &st.partitions {
                let sums: Vec<u64> = p.status.iter().map(|r| r.checksum).collect();
                assert!(
                    sums.iter().all(|c| *c == sums[0]),
                    "partition {} differs at index {}: {:?}",
                    p.id,
                    p.status[0].checksum_index,
                    p.status
                );
            }
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not converge: {st:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A raw TCP connection for sending hand-made (and malformed) frames.
pub struct RawConn(pub TcpStream);

impl RawConn {
    pub fn open(port: u16) -> RawConn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawConn(s)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    /// Reads one response frame: `None` when the server closed the connection.
    pub fn recv(&mut self) -> Option<kahuna_protocol::codec::DecodedResponse> {
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).ok()?;
        let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
        self.0.read_exact(&mut payload).ok()?;
        Some(kahuna_protocol::decode_response(&payload).expect("server sent a valid response"))
    }

    /// True when the server has closed its side.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0))
    }
}
