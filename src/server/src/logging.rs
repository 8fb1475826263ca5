//! Logs: `tracing` events on stderr, as text or JSON lines (`--log-format`), filtered by
//! `--log-level` (or `RUST_LOG`, which wins), with spans for requests, peer links and snapshot
//! transfers; raft-rs's own log (slog) is forwarded into them under the target `raft`, with the
//! partition it is about. Nothing on a hot path logs above `debug`.

use std::fmt::Write as _;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber for the whole process.
pub fn init(format: &str, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(f),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| format!("log level: {e}"))?;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let done = match format {
        "json" => fmt.json().with_current_span(true).try_init(),
        "text" => fmt.with_ansi(false).try_init(),
        other => return Err(format!("log_format must be text or json, not {other:?}")),
    };
    done.map_err(|e| format!("logging: {e}"))
}

/// A slog logger for a partition's raft-rs node, forwarding to `tracing`.
pub fn raft_logger(partition: u64) -> slog::Logger {
    slog::Logger::root(RaftDrain { partition }, slog::o!())
}

struct RaftDrain {
    partition: u64,
}

/// Collects a record's key-value pairs as ` key=value`.
struct Pairs(String);

impl slog::Serializer for Pairs {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for RaftDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, r: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV;
        let mut kv = Pairs(String::new());
        let _ = r.kv().serialize(r, &mut kv);
        let _ = values.serialize(r, &mut kv);
        let (p, msg, kv) = (self.partition, r.msg(), kv.0);
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", partition = p, "{msg}{kv}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", partition = p, "{msg}{kv}"),
            slog::Level::Info => tracing::info!(target: "raft", partition = p, "{msg}{kv}"),
            slog::Level::Debug => tracing::debug!(target: "raft", partition = p, "{msg}{kv}"),
            slog::Level::Trace => tracing::trace!(target: "raft", partition = p, "{msg}{kv}"),
        }
        Ok(())
    }
}
