//! What an operator runs a node with: the Prometheus endpoint, and `cluster status --watch`.

use std::time::Duration;

use kahuna_client::SetOptions;
use kahuna_tests::{client_via, free_port, start_cluster_with, watchdog, ClusterOpts, Server};
use kahuna_tests::{http_get, series_value as value};

#[test]
fn metrics_are_served_and_move_as_requests_go_through() {
    watchdog(Duration::from_secs(60));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = Server::start(&["--shards", "1", "--no-pin", "--metrics-listen", &addr]);
    let (head, body) = http_get(port, "/health");
    assert!(head.starts_with("HTTP/1.1 200") && body == "ok\n", "{head}\n{body}");
    let (_, before) = http_get(port, "/metrics");
    assert!(value(&before, "process_resident_memory_bytes") > 1e6, "{before}");
    assert!(value(&before, "process_open_fds") > 3.0);
    let c = client_via(&s, 5000);
    for i in 0..20 {
        c.kv_set(format!("m{i}").as_bytes(), b"v", SetOptions::default()).unwrap();
    }
    let _ = c.kv_get(b"missing", Default::default());
    let (head, body) = http_get(port, "/metrics");
    assert!(head.contains("openmetrics-text"), "{head}");
    let sets = r#"kahuna_requests_total{shard="0",op="kv set",outcome="ok"}"#;
    assert!(value(&body, sets) >= 20.0, "{body}");
    let misses = r#"kahuna_requests_total{shard="0",op="kv get",outcome="NOT_FOUND"}"#;
    assert!(value(&body, misses) >= 1.0, "{body}");
    assert!(
        value(&body, r#"kahuna_request_duration_seconds_count{shard="0",op="kv set"}"#) >= 20.0
    );
    assert!(value(&body, r#"kahuna_wal_write_duration_seconds_count{shard="0"}"#) >= 20.0);
    assert!(value(&body, r#"kahuna_client_connections{shard="0"}"#) >= 1.0);
    // State gauges come once a second.
    std::thread::sleep(Duration::from_millis(1300));
    let (_, body) = http_get(port, "/metrics");
    assert!(value(&body, "kahuna_partition_commit_index{") >= 1.0, "{body}");
    assert_eq!(value(&body, r#"kahuna_disk_full{shard="0"}"#), 0.0);
    assert_eq!(value(&body, r#"kahuna_clock_ok{shard="0"}"#), 1.0);
    assert!(body.trim_end().ends_with("# EOF"), "not OpenMetrics text");
    let (head, _) = http_get(port, "/nothing");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // Every series the example dashboard plots exists.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/grafana-kahuna.json"),
    )
    .unwrap();
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("kahuna_") || w.starts_with("process_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        // A single node measures no peer's clock: that series needs a cluster.
        let described =
            body.contains(&format!("# TYPE {base} ")) || base == "kahuna_clock_offset_seconds";
        assert!(described, "the dashboard plots {name}, not served");
    }
}

#[test]
fn cluster_status_watch_refreshes_with_rates_and_lag() {
    watchdog(Duration::from_secs(90));
    let c = start_cluster_with(ClusterOpts::default());
    let cl = client_via(c.node(1), 5000);
    let writer = std::thread::spawn(move || {
        for i in 0..300 {
            let _ = cl.kv_set(format!("w{}", i % 10).as_bytes(), b"v", SetOptions::default());
        }
    });
    let out =
        c.node(2).cli(&["cluster", "status", "--watch", "--interval-ms", "300", "--count", "3"]);
    writer.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // Three frames, each drawn after clearing the screen, with the lag and rate columns.
    assert_eq!(text.matches("\x1b[H\x1b[2J").count(), 3, "{text}");
    assert!(text.contains("LAG") && text.contains("RATE/s"), "{text}");
    let json = c.node(2).cli(&[
        "--output",
        "json",
        "cluster",
        "status",
        "--watch",
        "--interval-ms",
        "100",
        "--count",
        "2",
    ]);
    let lines: Vec<_> = String::from_utf8_lossy(&json.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn logs_are_json_lines_with_raft_s_own_log_forwarded() {
    watchdog(Duration::from_secs(60));
    // RUST_LOG (which the harness sets) would win over --log-level.
    let args = ["--shards", "1", "--no-pin", "--log-format", "json", "--log-level", "info"];
    let mut s = Server::launch_env(&args, &[("RUST_LOG", "")]);
    s.wait_ready();
    client_via(&s, 5000).kv_set(b"k", b"v", SetOptions::default()).unwrap();
    let log = s.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .any(|v| v["fields"]["message"].as_str().is_some_and(|m| m.contains("serving on"))));
    // raft-rs's election, forwarded with the partition it is about.
    let raft: Vec<_> = lines.iter().filter(|v| v["target"] == "raft").collect();
    assert!(!raft.is_empty(), "raft-rs logged nothing:\n{log}");
    assert!(raft.iter().all(|v| v["fields"]["partition"].as_u64().is_some()), "{raft:?}");
    assert!(lines.iter().all(|v| v["level"].is_string() && v["timestamp"].is_string()));
    // A bad format is refused at start.
    let (code, err) = s.run_to_exit(&["--log-format", "yaml"], Duration::from_secs(10));
    assert_eq!(code, Some(2), "{err}");
}
