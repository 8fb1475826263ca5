//! The client listener of one shard: every shard binds the same address (`SO_REUSEPORT`), the
//! kernel spreads connections over them, and each connection stays on the shard that accepted it.
//!
//! Per connection:
//! 1. the reader cuts frames (length checked before buffering), verifies each flatbuffer and
//!    starts one task per request, at most `max_inflight_per_connection` at a time;
//! 2. each task routes its request (`Shard::execute`) and hands the answer to the writer;
//! 3. the writer encodes answers as they finish, in any order, coalescing them into few writes.
//!
//! Bad input gets a typed error frame: an undecodable request is answered on its id when the
//! header can be read (id 0 otherwise) and the connection goes on; a frame over the limit or of
//! length zero cannot be resynchronised, so it is answered and the connection closed.

use std::cell::Cell;
use std::rc::Rc;

use flatbuffers::FlatBufferBuilder;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use kahuna_protocol::{
    decode_request, encode_response, parse_frame, ErrorCode, FrameError, Reply, WireError,
};

use crate::shard::Shard;

struct Outgoing {
    request_id: u64,
    result: Result<Reply, WireError>,
    leader_hint: u64,
}

const READ_CHUNK: usize = 64 << 10;
/// The writer stops coalescing and writes once this much is encoded.
const WRITE_COALESCE_BYTES: usize = 256 << 10;

pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or a reset during accept: back off instead of spinning.
                tracing::warn!("shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= shard.cfg.max_connections_per_shard {
            glommio::spawn_local(refuse(stream, shard.cfg.max_connections_per_shard)).detach();
            continue;
        }
        shard.connections.set(shard.connections.get() + 1);
        shard.metrics.connections.inc();
        let shard = shard.clone();
        glommio::spawn_local(async move {
            connection(&shard, stream).await;
            shard.connections.set(shard.connections.get() - 1);
            shard.metrics.connections.dec();
        })
        .detach();
    }
}

async fn refuse(mut stream: TcpStream, limit: usize) {
    let mut fbb = FlatBufferBuilder::new();
    let mut out = Vec::new();
    let err = WireError::new(
        ErrorCode::Unavailable,
        format!("too many connections on this shard (limit {limit})"),
    );
    encode_response(&mut fbb, 0, &Err(err), 0, &mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

async fn connection(shard: &Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let max_inflight = shard.cfg.max_inflight_per_connection;
    let max_frame = shard.cfg.max_frame_bytes;
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (tx, rx) = local_channel::new_bounded::<Outgoing>(max_inflight + 1);
    let tx = Rc::new(tx);
    let writer_task = glommio::spawn_local(write_loop(writer, rx));
    let inflight = Rc::new(Cell::new(0usize));
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut start = 0usize;
    'conn: loop {
        loop {
            match parse_frame(&buf[start..], max_frame) {
                Ok(Some((s, e))) => {
                    handle_frame(shard, &buf[start + s..start + e], &tx, &inflight, max_inflight)
                        .await;
                    start += e;
                }
                Ok(None) => break,
                Err(err) => {
                    let code = match err {
                        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                        FrameError::Empty => ErrorCode::Invalid,
                    };
                    let out = Outgoing {
                        request_id: 0,
                        result: Err(WireError::new(code, err.to_string())),
                        leader_hint: 0,
                    };
                    let _ = tx.send(out).await;
                    break 'conn;
                }
            }
        }
        // Keep only the unparsed tail, then read more.
        buf.drain(..start);
        start = 0;
        let len = buf.len();
        buf.resize(len + READ_CHUNK, 0);
        match reader.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => {
                buf.truncate(len);
                break;
            }
            Ok(n) => buf.truncate(len + n),
        }
    }
    // Answers still in flight go out before the writer closes (a client may half-close).
    drop(tx);
    let _ = writer_task.await;
}

async fn handle_frame(
    shard: &Rc<Shard>,
    payload: &[u8],
    tx: &Rc<LocalSender<Outgoing>>,
    inflight: &Rc<Cell<usize>>,
    max_inflight: usize,
) {
    let (request_id, timeout_ms, op) = match decode_request(payload) {
        Ok(r) => r,
        Err(e) => {
            let out = Outgoing {
                request_id: e.request_id().unwrap_or(0),
                result: Err(WireError::new(e.code(), e.to_string())),
                leader_hint: 0,
            };
            let _ = tx.send(out).await;
            return;
        }
    };
    if inflight.get() >= max_inflight {
        let err = WireError::new(
            ErrorCode::Overloaded,
            format!("more than {max_inflight} requests in flight on this connection"),
        );
        let _ = tx.send(Outgoing { request_id, result: Err(err), leader_hint: 0 }).await;
        return;
    }
    inflight.set(inflight.get() + 1);
    let deadline = shard.deadline(timeout_ms);
    let (shard, tx, inflight) = (shard.clone(), tx.clone(), inflight.clone());
    let (name, arrived) = (op.name(), std::time::Instant::now());
    let span = tracing::debug_span!("request", op = name, id = request_id);
    glommio::spawn_local(tracing::Instrument::instrument(
        async move {
            let (result, leader_hint) = shard.execute(op, deadline).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.code.name(),
            };
            shard.metrics.request(name, outcome, arrived.elapsed().as_secs_f64());
            let _ = tx.send(Outgoing { request_id, result, leader_hint }).await;
            inflight.set(inflight.get() - 1);
        },
        span,
    ))
    .detach();
}

async fn write_loop(
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    rx: local_channel::LocalReceiver<Outgoing>,
) {
    let mut fbb = FlatBufferBuilder::with_capacity(1024);
    let mut out = Vec::with_capacity(16 << 10);
    while let Some(first) = rx.recv().await {
        encode_response(&mut fbb, first.request_id, &first.result, first.leader_hint, &mut out);
        while out.len() < WRITE_COALESCE_BYTES {
            match futures_lite::future::poll_once(rx.recv()).await {
                Some(Some(m)) => {
                    encode_response(&mut fbb, m.request_id, &m.result, m.leader_hint, &mut out)
                }
                _ => break,
            }
        }
        if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
            return; // the client went away; pending answers have nowhere to go
        }
        out.clear();
    }
    let _ = writer.close().await;
}
