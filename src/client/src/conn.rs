//! One pipelined connection: a writer task sends frames, a reader task matches answers to
//! their callers by request id, in whatever order they arrive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kahuna_protocol::{decode_response, parse_frame, ErrorCode, Reply, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub(crate) type Answer = (Result<Reply, WireError>, u64);
type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

/// Frames queued toward one connection before senders wait.
const WRITE_QUEUE: usize = 1024;

pub(crate) struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    waiters: Waiters,
    closed: Arc<AtomicBool>,
}

fn lost(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Unavailable, msg)
}

impl Conn {
    pub(crate) async fn open(addr: &str, max_frame_bytes: usize) -> Result<Conn, WireError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| lost(format!("connecting to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let waiters: Waiters = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let closed_w = closed.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(frame) = rx.recv().await {
                out.extend_from_slice(&frame);
                while out.len() < (256 << 10) {
                    match rx.try_recv() {
                        Ok(f) => out.extend_from_slice(&f),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&out).await.is_err() {
                    break;
                }
                out.clear();
            }
            closed_w.store(true, Ordering::SeqCst);
        });
        let (w, closed_r) = (waiters.clone(), closed.clone());
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
            let mut chunk = vec![0u8; 64 << 10];
            'read: loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut start = 0;
                loop {
                    match parse_frame(&buf[start..], max_frame_bytes) {
                        Ok(Some((s, e))) => {
                            if let Ok((id, result, hint)) =
                                decode_response(&buf[start + s..start + e])
                            {
                                if id == 0 {
                                    // A connection-level error. Refused at accept
                                    // (UNAVAILABLE): the server read nothing, so everyone
                                    // waiting may retry. Anything else (a frame it could not
                                    // read) closes the connection after requests it may have
                                    // carried out: those learn it as a lost connection below.
                                    if let Err(err) = &result {
                                        if err.code == ErrorCode::Unavailable {
                                            closed_r.store(true, Ordering::SeqCst);
                                            fail_all(&w, err.clone());
                                        }
                                    }
                                } else if let Some(tx) = w.lock().unwrap().remove(&id) {
                                    let _ = tx.send((result, hint));
                                }
                            }
                            start += e;
                        }
                        Ok(None) => break,
                        Err(_) => break 'read,
                    }
                }
                buf.drain(..start);
            }
            // Set before the waiters are dropped: a sender that still finds the connection
            // open has its waiter in the map, and it is dropped here (see `send`).
            closed_r.store(true, Ordering::SeqCst);
            // The answers of requests already sent will never come: their callers learn that
            // the connection was lost after sending (a write's outcome is then unknown), never
            // a retryable error (`Client::call` decides by the kind of request).
            let lost_waiters: Vec<_> = w.lock().unwrap().drain().collect();
            drop(lost_waiters);
        });
        Ok(Conn { tx, waiters, closed })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.tx.is_closed()
    }

    /// Sends one encoded request; the receiver yields its answer, or is dropped if the
    /// connection is lost first. `Err` means the request was provably never sent, so it is safe
    /// to send again elsewhere.
    ///
    /// The waiter goes in before the connection is checked: a reader that closes after the
    /// check drops it (so the caller learns the loss), and a connection found closed before the
    /// frame is handed to the writer means the server reads nothing more from it.
    pub(crate) async fn send(
        &self,
        id: u64,
        frame: Vec<u8>,
    ) -> Result<oneshot::Receiver<Answer>, WireError> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(id, tx);
        if self.is_closed() {
            self.waiters.lock().unwrap().remove(&id);
            return Err(lost("connection closed"));
        }
        if self.tx.send(frame).await.is_err() {
            // The writer stopped before it took the frame: it was never written.
            self.waiters.lock().unwrap().remove(&id);
            return Err(lost("connection closed"));
        }
        Ok(rx)
    }

    pub(crate) fn forget(&self, id: u64) {
        self.waiters.lock().unwrap().remove(&id);
    }
}

fn fail_all(w: &Waiters, err: WireError) {
    for (_, tx) in w.lock().unwrap().drain() {
        let _ = tx.send((Err(err.clone()), 0));
    }
}
