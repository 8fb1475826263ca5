//! Fault injection for tests: named failpoints (the `fail` crate) compiled in only with the
//! `failpoints` cargo feature, which `make test` turns on and release builds never do.
//!
//! A test arms a failpoint at start (`FAILPOINTS=name=action;...`, the `fail` crate's syntax) or
//! while the node runs, by writing the same syntax to `<data-dir>/failpoints` (one `name=action`
//! per line; an absent name is disarmed). A thread checks the file every 50 ms.
//!
//! The failpoints, where they act and what they simulate:
//!
//! | name | where | effect of `return` (or `return(v)`) |
//! |---|---|---|
//! | `wal_write_error` | WAL batch write | the write fails with EIO: the node stops (74), nothing of the batch acknowledged |
//! | `wal_no_space` | WAL batch write | the write fails with ENOSPC: a full disk (writes refused, retried until it clears) |
//! | `rocksdb_read_error` | every RocksDB read | the read fails: the node stops (74) |
//! | `clock_offset_ms` | the wall clock | reads `v` ms ahead (negative: behind): a clock jump |
//! | `pause_before_apply` | before applying a batch | use `sleep(ms)`: the shard stalls, as in a long GC pause |
//! | `defer_apply` | each loop turn | committed entries wait (unapplied) while it fires: a slow apply |
//! | `txn_crash_before_primary_prepare` | a transaction's coordinator | prepares every part but the first key's, then the process aborts: intents left, no record |
//! | `txn_crash_after_prepare` | a transaction's coordinator, every part prepared | the process aborts: intents left, record pending |
//! | `txn_crash_after_commit` | a transaction's coordinator, record committed | the process aborts: intents left unresolved |
//!
//! Must never: be reachable in a build without the feature ([`fired`] is then `None`, inlined
//! away).

/// Whether failpoint `name` fires now, and the value of `return(v)` if it has one.
#[cfg(feature = "failpoints")]
pub fn fired(name: &str) -> Option<Option<String>> {
    fail::eval(name, |v| v)
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn fired(_name: &str) -> Option<Option<String>> {
    None
}

/// Arms the failpoints of `FAILPOINTS` and starts watching `<data_dir>/failpoints`.
#[cfg(feature = "failpoints")]
pub fn start(data_dir: &std::path::Path) {
    let scenario = fail::FailScenario::setup();
    // The scenario lives as long as the process.
    std::mem::forget(scenario);
    let path = data_dir.join("failpoints");
    let spawned = std::thread::Builder::new().name("failpoints".into()).spawn(move || {
        // Those armed from the environment count as armed by the file: an empty file disarms.
        let mut armed: Vec<String> = std::env::var("FAILPOINTS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|a| a.split_once('=').map(|(n, _)| n.trim().to_string()))
            .collect();
        // No file: nothing to change (an empty file disarms everything).
        let mut last: Option<String> = None;
        loop {
            let read = std::fs::read_to_string(&path).ok();
            if let Some(text) = read.as_ref().filter(|t| Some(*t) != last.as_ref()) {
                let mut now = Vec::new();
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    let Some((name, actions)) = line.split_once('=') else { continue };
                    match fail::cfg(name.trim(), actions.trim()) {
                        Ok(()) => {
                            tracing::warn!("failpoint {} armed: {}", name.trim(), actions.trim())
                        }
                        Err(e) => tracing::warn!("failpoint {line:?}: {e}"),
                    }
                    now.push(name.trim().to_string());
                }
                for gone in armed.iter().filter(|n| !now.contains(n)) {
                    fail::remove(gone);
                    tracing::warn!("failpoint {gone} disarmed");
                }
                armed = now;
                last = read.clone();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("failpoints: cannot watch {}: {e}", data_dir.display());
    }
}

#[cfg(not(feature = "failpoints"))]
pub fn start(_data_dir: &std::path::Path) {}
