//! The load generator against a real node: every workload runs briefly and completes
//! operations with zero errors, and its JSON has the documented shape.

use std::process::Command;
use std::time::{Duration, Instant};

use kahuna_tests::{bin, watchdog, Server};

#[test]
fn every_workload_completes_operations_without_errors() {
    watchdog(Duration::from_secs(150));
    let s = Server::start(&["--shards", "1", "--no-pin"]);
    let out = s.data_dir.join("smoke.json");
    let mut child = Command::new(bin("kahuna-bench"))
        .args([
            "--endpoints",
            &s.endpoint(),
            "--suite",
            "smoke",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
        ])
        .args(["--keys", "200", "--quiet", "--floor-dir"])
        .arg(&s.data_dir)
        .arg("--output")
        .arg(&out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kahuna-bench did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "kahuna-bench failed: {status}");
    let runs: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["workload"].as_str().unwrap()).collect();
    for w in ["kv-set", "kv-get", "kv-cas", "kv-scan", "lock", "seq", "mixed", "txn", "txn-cross"] {
        assert!(names.contains(&w), "{w} missing from {names:?}");
    }
    for r in &runs {
        assert!(r["ops"].as_u64().unwrap() > 0, "{}: no operations", r["name"]);
        assert_eq!(r["errors"], serde_json::json!({}), "{}: errors", r["name"]);
        assert!(r["latency_us"]["p50"].as_u64().unwrap() > 0);
        assert!(r["latency_us"]["p50"].as_u64() <= r["latency_us"]["p99"].as_u64());
        assert!(r["floors"]["fdatasync_us"].as_f64().unwrap() > 0.0);
        assert!(r["floors"]["loopback_rtt_us"].as_f64().unwrap() > 0.0);
        assert!(r["throughput_ops_s"].as_f64().unwrap() > 0.0);
    }
}
