//! The machine's own floors, measured in the same run as the load, so latencies read as
//! multiples of what the disk and the loopback can do at best.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Median of a 4 KiB write followed by `fdatasync`, through io_uring, in `dir`: appending
/// (`overwrite` false: the file grows, so the sync also commits its new size through the
/// filesystem journal), or overwriting blocks written and synced before (`overwrite` true: a
/// pure data sync, what a log that zero-fills ahead pays).
pub fn fdatasync_us(dir: &Path, rounds: usize, overwrite: bool) -> std::io::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(".kahuna-bench-fsync-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    if overwrite {
        file.write_all(&vec![0u8; rounds * 4096])?;
        file.sync_all()?;
    }
    let mut ring = IoUring::new(8)?;
    let buf = vec![0x5au8; 4096];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let start = Instant::now();
        let write = opcode::Write::new(types::Fd(file.as_raw_fd()), buf.as_ptr(), buf.len() as u32)
            .offset((i * 4096) as u64)
            .build()
            .flags(io_uring::squeue::Flags::IO_LINK)
            .user_data(1);
        let sync = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(2);
        // SAFETY: `buf` and `file` outlive the submission; we wait for both completions below.
        unsafe {
            let mut sq = ring.submission();
            sq.push(&write).map_err(std::io::Error::other)?;
            sq.push(&sync).map_err(std::io::Error::other)?;
        }
        ring.submit_and_wait(2)?;
        for cqe in ring.completion() {
            if cqe.result() < 0 {
                let _ = std::fs::remove_file(&path);
                return Err(std::io::Error::from_raw_os_error(-cqe.result()));
            }
        }
        samples.push(start.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    Ok(median(samples).as_secs_f64() * 1e6)
}

/// Median round trip of 64 bytes over a loopback TCP connection.
pub fn loopback_rtt_us(rounds: usize) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 64];
        while s.read_exact(&mut b).is_ok() {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut b = [7u8; 64];
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
        samples.push(start.elapsed());
    }
    drop(c);
    let _ = echo.join();
    Ok(median(samples).as_secs_f64() * 1e6)
}
