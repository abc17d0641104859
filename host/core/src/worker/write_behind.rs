//! Write-behind of an attempt's job writes: a guest's `emit` or `progress`
//! (and the model call's text deltas) returns once its write is queued, and
//! one writer per attempt sends everything queued meanwhile in one fenced
//! call, in order. A guest that reports as it goes no longer waits a Redis
//! round trip per report, and reports that come together cost one. Writes of
//! the guest's state go through the same line, so the job's writes land in
//! the order the guest made them, but wait until written (a read after them
//! sees them). When the attempt ends, the writes not yet sent are handed
//! over to its outcome, which applies them first in its own call (or the
//! writer is flushed, where follow-up jobs must come after them), so every
//! event of an attempt precedes its last and its last writes cost no call.
//!
//! Owns the queue of pending writes and the writer task; what a write does is
//! the queue's (`job_writes.lua`). A refusal has the same effect as before, only
//! later: the attempt is marked lost (or cancelled) and its guest stopped.

use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::queue::{Fence, JobWrite, Queue, Written};

/// Writes waiting to be sent; a guest that reports faster than Redis takes
/// them waits for room here.
const PENDING: usize = 256;
/// At most this many writes go in one call.
const MAX_BATCH: usize = 64;

/// An attempt's writer; [`WriteBehind::hand_over`] or [`WriteBehind::flush`]
/// it before recording its outcome.
#[derive(Default)]
pub(super) struct WriteBehind {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Started by the attempt's first write: many jobs make none.
    running: Option<Running>,
    flushed: bool,
}

struct Running {
    queued: mpsc::Sender<Pending>,
    /// Cancelled when the attempt ended and hands its unsent writes over.
    handed_over: CancellationToken,
    /// Returns the writes it was handed over.
    writer: JoinHandle<Vec<JobWrite>>,
}

/// What the writer needs, asked for when it starts.
pub(super) struct Writer {
    pub queue: Queue,
    pub fence: Fence,
    pub refusals: Refusals,
}

/// A queued write, and who waits for it to be written.
struct Pending {
    write: JobWrite,
    written: Option<oneshot::Sender<()>>,
}

/// What the writer acts on when a write is refused.
pub(super) struct Refusals {
    pub job_id: String,
    /// Cancelled when the attempt lost its job.
    pub lost: CancellationToken,
    /// Cancelled when the job's cancel was accepted.
    pub stop: CancellationToken,
}

impl WriteBehind {
    /// Queues `write` after those before it (nothing once flushed);
    /// `writer` is called if this is the attempt's first.
    pub async fn push(&self, write: JobWrite, writer: impl FnOnce() -> Writer) {
        let pending = Pending {
            write,
            written: None,
        };
        self.queue(pending, writer).await;
    }

    /// Queues `write` and waits until it was sent (or refused).
    pub async fn write(&self, write: JobWrite, writer: impl FnOnce() -> Writer) {
        let (written, sent) = oneshot::channel();
        let pending = Pending {
            write,
            written: Some(written),
        };
        self.queue(pending, writer).await;
        let _ = sent.await;
    }

    async fn queue(&self, pending: Pending, writer: impl FnOnce() -> Writer) {
        let sender = {
            let mut inner = lock(&self.inner);
            if inner.running.is_none() && !inner.flushed {
                let (queued, receiver) = mpsc::channel(PENDING);
                let handed_over = CancellationToken::new();
                let writer = tokio::spawn(send_in_order(writer(), receiver, handed_over.clone()));
                inner.running = Some(Running {
                    queued,
                    handed_over,
                    writer,
                });
            }
            inner.running.as_ref().map(|running| running.queued.clone())
        };
        if let Some(sender) = sender {
            // Only a writer that ended (the runtime is stopping) refuses.
            let _ = sender.send(pending).await;
        }
    }

    /// Sends what is queued and waits until it is written; later writes
    /// are dropped.
    pub async fn flush(&self) {
        if let Some(running) = self.stop() {
            drop(running.queued);
            let _ = running.writer.await;
        }
    }

    /// Waits for the call in flight (if any), then returns the writes not
    /// yet sent, in order, for the outcome's call to apply; later writes are
    /// dropped.
    pub async fn hand_over(&self) -> Vec<JobWrite> {
        let Some(running) = self.stop() else {
            return Vec::new();
        };
        running.handed_over.cancel();
        drop(running.queued);
        running.writer.await.unwrap_or_default()
    }

    fn stop(&self) -> Option<Running> {
        let mut inner = lock(&self.inner);
        inner.flushed = true;
        inner.running.take()
    }
}

/// Sends the queued writes in order, a batch per call, until the queue
/// closes; once `handed_over`, returns those left instead of sending them.
async fn send_in_order(
    writer: Writer,
    mut queued: mpsc::Receiver<Pending>,
    handed_over: CancellationToken,
) -> Vec<JobWrite> {
    let Writer {
        queue,
        fence,
        refusals,
    } = writer;
    let mut pending = Vec::with_capacity(MAX_BATCH);
    while queued.recv_many(&mut pending, MAX_BATCH).await > 0 {
        if handed_over.is_cancelled() {
            while let Ok(more) = queued.try_recv() {
                pending.push(more);
            }
            // No one waits on them any more: the attempt ended.
            return pending.into_iter().map(|pending| pending.write).collect();
        }
        let (batch, waiting): (Vec<JobWrite>, Vec<Option<oneshot::Sender<()>>>) = pending
            .drain(..)
            .map(|pending| (pending.write, pending.written))
            .unzip();
        match queue.write_all(&fence, &batch).await {
            Ok(Written::Yes) => {}
            Ok(Written::Fenced) => {
                tracing::warn!(job = %refusals.job_id, "a write of this attempt was refused: its job was given to another attempt");
                refusals.lost.cancel();
            }
            Ok(Written::Cancelled) => refusals.stop.cancel(),
            // The guest goes on; recording the outcome retries Redis.
            Err(error) => {
                tracing::warn!(job = %refusals.job_id, %error, writes = batch.len(), "could not write the job's events")
            }
        }
        for written in waiting.into_iter().flatten() {
            let _ = written.send(());
        }
    }
    Vec::new()
}

/// The guarded values are replaced whole, never left half-changed.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
