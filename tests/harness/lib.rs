//! The black-box test harness: real `kahuna-server` processes on 127.0.0.1, each with its own
//! data directory, stopped by PID and cleaned up when the test ends, however it ends.
//!
//! Every test calls [`watchdog`] first: if the test overruns its bound, the watchdog kills every
//! server it started and fails the run, so nothing is left behind and nothing hangs CI.

pub mod bank;
pub mod history;
pub mod proxy;
pub mod workload;

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

thread_local! {
    /// The running test's token: dropped when its thread ends (or replaced when the same thread
    /// runs the next test), which stands its watchdog down.
    static TEST_ALIVE: std::cell::RefCell<Option<std::sync::Arc<()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Fails the test run and kills every server if the test is still running after `limit`. A
/// test that ended (its thread gone, or its thread running the next test) is not timed any
/// more: several tests share one process, and the first one's limit is not theirs.
pub fn watchdog(limit: Duration) {
    let token = std::sync::Arc::new(());
    let alive = std::sync::Arc::downgrade(&token);
    TEST_ALIVE.with(|t| *t.borrow_mut() = Some(token));
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if alive.upgrade().is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if alive.upgrade().is_none() {
            return;
        }
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
    env: Vec<(String, String)>,
    log: PathBuf,
    /// The exit status of the process, once it ended on its own.
    exited: Option<std::process::ExitStatus>,
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
        Self::launch_env(extra, &[])
    }

    /// [`Server::launch`] with environment variables (`FAILPOINTS` arms failpoints at start).
    pub fn launch_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::launch_on(free_port(), extra, env)
    }

    /// [`Server::launch_env`] on a client port the caller chose.
    pub fn launch_on(port: u16, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let data_dir = std::env::temp_dir().join(format!("kahuna-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // Every node listens for peers (a node may join it): one started alone gets free peer
        // ports too, rather than its client port + 100, which another test may hold.
        if !args.iter().any(|a| a == "--peer-listen" || a == "--initial-cluster") {
            let (base, held) = proxy::bind_consecutive(8);
            drop(held);
            args.extend(["--peer-listen".to_string(), format!("127.0.0.1:{base}")]);
        }
        let mut s = Server {
            child: None,
            port,
            log: data_dir.with_extension("log"),
            data_dir,
            args,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            exited: None,
        };
        s.spawn_process();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn_process(&mut self) {
        // Failpoints armed in a previous life do not carry over (`FAILPOINTS` arms at start).
        let _ = std::fs::remove_file(self.data_dir.join("failpoints"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(bin("kahuna-server"))
            .arg("--listen")
            .arg(self.endpoint())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            // Metrics on the client port + 200 could land on another test's port: off unless asked.
            .args(if self.args.iter().any(|a| a == "--metrics-listen") {
                vec![]
            } else {
                vec!["--metrics-listen", "off"]
            })
            // Lock decisions at debug: a failed lock check can be traced to the apply that
            // granted each token. KAHUNA_TEST_LOG replaces it to trace a flaky run.
            .env(
                "RUST_LOG",
                std::env::var("KAHUNA_TEST_LOG")
                    .unwrap_or_else(|_| "info,raft=warn,kahuna::locks=debug".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting kahuna-server");
        PIDS.lock().unwrap().push(child.id());
        self.child = Some(child);
        self.exited = None;
    }

    /// Sets the environment of the next start (`relaunch`, `restart`).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// Arms failpoints in the running node (`name=action` lines; see the server's `faults`
    /// module); an empty string disarms them all. Takes effect within about 50 ms.
    pub fn arm(&self, failpoints: &str) {
        let tmp = self.data_dir.join("failpoints.tmp");
        std::fs::write(&tmp, failpoints.replace(';', "\n")).unwrap();
        std::fs::rename(&tmp, self.data_dir.join("failpoints")).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Waits up to `within` for the process to end on its own; its exit code, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                self.exited = Some(status);
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Runs the server in the foreground with extra flags until it exits (for start-up
    /// refusals); returns its exit code and what it printed.
    pub fn run_to_exit(&self, extra: &[&str], within: Duration) -> (Option<i32>, String) {
        let mut child = Command::new(bin("kahuna-server"))
            .arg("--listen")
            .arg(self.endpoint())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kahuna-server");
        PIDS.lock().unwrap().push(child.id());
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                return (status.code(), err);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(child.id());
        let _ = child.wait();
        (None, String::new())
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

    /// Waits until the node accepts connections (without asking it anything).
    pub fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("kahuna-server exited with {status}:\n{}", self.log_text());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("kahuna-server did not listen:\n{}", self.log_text());
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

    /// True unless the test killed it (or it ended on its own and `wait_exit` saw it).
    pub fn child_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
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
        if !std::thread::panicking() && std::env::var_os("KAHUNA_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("server log kept at {}", self.log.display());
        }
    }
}

/// `n` nodes of one cluster on 127.0.0.1, one shard each, unpinned (they share the cores).
pub fn start_cluster(n: usize, extra: &[&str]) -> Vec<Server> {
    start_cluster_with(ClusterOpts { nodes: n, extra, ..Default::default() }).nodes
}

/// How [`start_cluster_with`] lays a cluster out.
pub struct ClusterOpts<'a> {
    pub nodes: usize,
    /// Shards per node (every node runs the same number).
    pub shards: usize,
    /// Route every peer link through its own [`proxy::Proxy`], one per ordered pair of nodes,
    /// so faults can cut or slow any direction between any two nodes.
    pub proxied: bool,
    pub extra: &'a [&'a str],
    /// Flags for one node only: `(node id, flags)`.
    pub per_node: &'a [(u64, &'a [&'a str])],
    /// Seeds the proxies' fault decisions (printed by the tests that use them).
    pub seed: u64,
    /// Wait for every node to serve before returning.
    pub wait: bool,
    /// Serve each node's metrics (on a port of its own, in [`Cluster::metrics_ports`]).
    pub metrics: bool,
}

impl Default for ClusterOpts<'_> {
    fn default() -> Self {
        ClusterOpts {
            nodes: 3,
            shards: 1,
            proxied: false,
            extra: &[],
            per_node: &[],
            seed: 1,
            wait: true,
            metrics: false,
        }
    }
}

/// A running cluster and, if proxied, the links between its nodes.
pub struct Cluster {
    pub nodes: Vec<Server>,
    /// `(from, to)` node ids → the proxy carrying `from`'s peer traffic to `to`.
    pub links: std::collections::BTreeMap<(u64, u64), proxy::Proxy>,
    /// Each node's own peer port (shard 0), where it listens.
    pub peer_ports: Vec<u16>,
    /// Each node's metrics port, with [`ClusterOpts::metrics`].
    pub metrics_ports: Vec<u16>,
}

pub fn start_cluster_with(o: ClusterOpts) -> Cluster {
    // Each node's peer listeners (`shards` consecutive ports) and client port, all reserved at
    // once so that no two of them coincide, then released for the servers to bind.
    let mut held = Vec::new();
    let mut bases = Vec::new();
    let mut client_ports = Vec::new();
    let mut metrics_ports = Vec::new();
    for _ in 0..o.nodes {
        let (base, listeners) = proxy::bind_consecutive(o.shards);
        bases.push(base);
        held.extend(listeners);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        client_ports.push(l.local_addr().unwrap().port());
        held.push(l);
        if o.metrics {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            metrics_ports.push(l.local_addr().unwrap().port());
            held.push(l);
        }
    }
    let mut links = std::collections::BTreeMap::new();
    if o.proxied {
        for from in 1..=o.nodes as u64 {
            for to in 1..=o.nodes as u64 {
                if from != to {
                    let target = bases[to as usize - 1];
                    let seed = o.seed.wrapping_mul(31).wrapping_add(from * 7 + to);
                    links.insert((from, to), proxy::Proxy::start(target, o.shards, seed));
                }
            }
        }
    }
    // Proxies took their ports while the nodes' were still held.
    drop(held);
    let shards = o.shards.to_string();
    let mut nodes: Vec<Server> = (1..=o.nodes as u64)
        .map(|id| {
            // Where this node reaches each peer: straight, or through its own proxy to it.
            let initial = (1..=o.nodes as u64)
                .map(|j| match links.get(&(id, j)) {
                    Some(p) => format!("{j}={}", p.addr()),
                    None => format!("{j}=127.0.0.1:{}", bases[j as usize - 1]),
                })
                .collect::<Vec<_>>()
                .join(",");
            let ids = id.to_string();
            let listen = format!("127.0.0.1:{}", bases[id as usize - 1]);
            let mut args = vec![
                "--id",
                ids.as_str(),
                "--initial-cluster",
                initial.as_str(),
                "--peer-listen",
                listen.as_str(),
                "--shards",
                shards.as_str(),
                "--no-pin",
            ];
            args.extend_from_slice(o.extra);
            for (_, flags) in o.per_node.iter().filter(|(n, _)| *n == id) {
                args.extend_from_slice(flags);
            }
            let metrics = metrics_ports
                .get(id as usize - 1)
                .map(|p| format!("127.0.0.1:{p}"))
                .unwrap_or_default();
            if o.metrics {
                args.extend(["--metrics-listen", metrics.as_str()]);
            }
            Server::launch_on(client_ports[id as usize - 1], &args, &[])
        })
        .collect();
    if o.wait {
        for s in &mut nodes {
            s.wait_ready();
        }
    }
    Cluster { nodes, links, peer_ports: bases, metrics_ports }
}

impl Cluster {
    pub fn node(&self, id: u64) -> &Server {
        &self.nodes[id as usize - 1]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Server {
        &mut self.nodes[id as usize - 1]
    }

    pub fn link(&self, from: u64, to: u64) -> &proxy::Proxy {
        &self.links[&(from, to)]
    }

    /// Cuts node `id` off from every other node, both ways (its client port stays reachable).
    pub fn isolate(&self, id: u64) {
        for ((from, to), p) in &self.links {
            if *from == id || *to == id {
                p.update(|f| f.blackhole_up = true);
            }
        }
    }

    /// Splits the cluster: nodes in `side` reach each other only, and the rest likewise.
    pub fn partition(&self, side: &[u64]) {
        for ((from, to), p) in &self.links {
            if side.contains(from) != side.contains(to) {
                p.update(|f| f.blackhole_up = true);
            }
        }
    }

    /// Applies `f` to the faults of every link.
    pub fn all_links(&self, f: impl Fn(&mut proxy::Faults)) {
        for p in self.links.values() {
            p.update(&f);
        }
    }

    pub fn heal(&self) {
        for p in self.links.values() {
            p.heal();
        }
    }

    /// Faults the links injected so far (frames dropped, connections reset).
    pub fn injected(&self) -> u64 {
        self.links.values().map(|p| p.injected()).sum()
    }

    /// Starts node `id` (the next one) with an empty data directory and `--join` through node
    /// `via`; it runs `shards` shards. Returns once it serves.
    pub fn join(&mut self, id: u64, via: u64, shards: usize, extra: &[&str]) -> &Server {
        assert_eq!(id as usize, self.nodes.len() + 1, "nodes join in id order");
        let (base, held) = proxy::bind_consecutive(shards);
        let client = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = client.local_addr().unwrap().port();
        drop((held, client));
        let (ids, peer, shards, join) = (
            id.to_string(),
            format!("127.0.0.1:{base}"),
            shards.to_string(),
            self.node(via).endpoint(),
        );
        let mut args = vec![
            "--id",
            ids.as_str(),
            "--join",
            join.as_str(),
            "--peer-listen",
            peer.as_str(),
            "--shards",
            shards.as_str(),
            "--no-pin",
        ];
        args.extend_from_slice(extra);
        let mut s = Server::launch_on(port, &args, &[]);
        s.wait_ready();
        self.peer_ports.push(base);
        self.nodes.push(s);
        self.nodes.last().unwrap()
    }

    /// The members as node `via` lists them: `(id, state, replicas held)`.
    pub fn members(&self, via: u64) -> Vec<(u64, String, u32)> {
        let c = client_via(self.node(via), 10_000);
        let (members, _) = c.membership(kahuna_client::MemberAction::List, 0).unwrap();
        members.into_iter().map(|m| (m.id, m.state, m.replicas)).collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|s| s.endpoint()).collect()
    }
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

/// Splits the partition holding `key` at `key`, through node `via`; true if it split.
pub fn split_at(c: &Cluster, via: u64, key: &str) -> bool {
    let st = status(c.node(via), false);
    let Some(p) = st.locate(key.as_bytes()) else { return false };
    if p.start == key.as_bytes() {
        return false;
    }
    let id = p.id.to_string();
    let out = c.node(via).cli(&["--timeout-ms", "10000", "cluster", "split", &id, key]);
    out.status.success()
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

/// GETs `path` from a node's metrics endpoint (its client port + 200 by default): the head and
/// the body of the answer.
pub fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// The value of the first series whose line starts with `prefix` (name and labels).
pub fn series_value(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no series {prefix} in:\n{body}"))
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
