//! Write-behind of an attempt's job writes: a guest's `emit` or `progress`
//! (and the model call's text deltas) returns once its write is queued, and
//! one writer per attempt sends everything queued meanwhile in one fenced
//! call, in order. A guest that reports as it goes no longer waits a Redis
//! round trip per report, and reports that come together cost one. Writes of
//! the guest's state go through the same line, so the job's writes land in
//! the order the guest made them, but wait until written (a read after them
//! sees them). The worker flushes the writer before it records the attempt's
//! outcome, so every event of an attempt precedes its last.
//!
//! Owns the queue of pending writes and the writer task; what a write does is
//! the queue's (`fenced.lua`). A refusal has the same effect as before, only
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

/// An attempt's writer; [`WriteBehind::flush`] it before recording its outcome.
#[derive(Default)]
pub(super) struct WriteBehind {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Started by the attempt's first write: many jobs make none.
    running: Option<(mpsc::Sender<Pending>, JoinHandle<()>)>,
    flushed: bool,
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
                let (sender, receiver) = mpsc::channel(PENDING);
                let task = tokio::spawn(send_in_order(writer(), receiver));
                inner.running = Some((sender, task));
            }
            inner.running.as_ref().map(|(sender, _)| sender.clone())
        };
        if let Some(sender) = sender {
            // Only a writer that ended (the runtime is stopping) refuses.
            let _ = sender.send(pending).await;
        }
    }

    /// Sends what is queued and waits until it is written; later writes
    /// are dropped.
    pub async fn flush(&self) {
        let running = {
            let mut inner = lock(&self.inner);
            inner.flushed = true;
            inner.running.take()
        };
        if let Some((sender, task)) = running {
            drop(sender);
            let _ = task.await;
        }
    }
}

async fn send_in_order(writer: Writer, mut queued: mpsc::Receiver<Pending>) {
    let Writer {
        queue,
        fence,
        refusals,
    } = writer;
    let mut pending = Vec::with_capacity(MAX_BATCH);
    while queued.recv_many(&mut pending, MAX_BATCH).await > 0 {
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
}

/// The guarded values are replaced whole, never left half-changed.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
