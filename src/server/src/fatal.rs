//! How the node stops when it cannot keep its promises, and the exit codes that say why.
//!
//! One rule for storage: any error from the WAL, RocksDB or a snapshot install stops the node
//! at once (as etcd and TiKV do). A storage error is never read as "absent" and never answered
//! around: a restart recovers from what is durable, or refuses to start and says why.
//!
//! Exit codes (stable; service managers and tests read them):
//!
//! | code | meaning |
//! |---|---|
//! | 1  | could not start (addresses, data directory, executors); the message says why |
//! | 2  | invalid configuration |
//! | 65 | the data directory is damaged (a WAL record in the middle of the log); nothing deleted |
//! | 70 | a bug: a thread panicked, and the whole process stops rather than serve half-alive |
//! | 74 | a storage error while running (WAL write, RocksDB read or write, snapshot install) |

use std::io::Write;

pub const EXIT_START: i32 = 1;
pub const EXIT_CONFIG: i32 = 2;
pub const EXIT_DAMAGED: i32 = 65;
pub const EXIT_PANIC: i32 = 70;
pub const EXIT_STORAGE: i32 = 74;

/// Stops the process now with `code`, after saying why on stderr. `_exit`: no destructors run,
/// so no other thread can act on state this failure left behind (RocksDB's included).
pub fn exit_now(code: i32, msg: &str) -> ! {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "kahuna-server: {msg}");
    let _ = err.flush();
    // SAFETY: `_exit` ends the process without running any code of ours; nothing is shared.
    unsafe { libc::_exit(code) }
}

/// A storage error: the node stops, a restart recovers from what is durable.
pub fn storage(what: &str, err: impl std::fmt::Display) -> ! {
    tracing::error!("fatal storage error while {what}: {err}; stopping the node");
    exit_now(EXIT_STORAGE, &format!("fatal storage error while {what}: {err}"))
}

/// Any panic, on any thread, stops the whole process: a shard whose executor died would keep
/// the node's ports and data directory while answering nothing.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        exit_now(EXIT_PANIC, "a thread panicked (a bug); stopping the whole process");
    }));
}
