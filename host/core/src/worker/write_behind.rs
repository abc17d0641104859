//! Write-behind of an attempt's job writes: a guest's `emit` or `progress`
//! (and the model call's text deltas) returns once its write is queued, and
//! one writer per attempt sends what was queued in one fenced call, in
//! order. A batch waits up to [`LINGER`] after its first write for company,
//! so writes made close together cost one call, and an attempt that ends
//! within it hands them all to its outcome, which applies them first in its
//! own call (or the writer is flushed, where follow-up jobs must come after
//! them): every event of an attempt precedes its last, and a short job's
//! reports cost no call of their own. Consecutive text deltas of a batch
//! become one `text_delta` event (up to [`DELTA_MAX_BYTES`]), every byte in
//! order. Writes of the guest's state go through the same line, so the job's
//! writes land in the order the guest made them, but they do not linger:
//! the guest waits until they are written (a read after them sees them).
//!
//! Owns the queue of pending writes and the writer task; what a write does is
//! the queue's (`job_writes.lua`). A refusal has the same effect as before, only
//! later: the attempt is marked lost (or cancelled) and its guest stopped.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::{Fence, JobWrite, Queue, Written};
use spool_runtime::EventType;

/// How long a batch's first write waits for more before the batch is sent:
/// well under what a person notices in a stream, and longer than a
/// zero-latency job takes, whose writes then ride with its outcome.
const LINGER: Duration = Duration::from_millis(5);
/// A text delta's text is cut into events of about this size: pieces stay
/// whole, so an event passes it by less than one piece.
const DELTA_MAX_BYTES: usize = 4096;
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

/// A queued write, when it was queued, and who waits for it to be written.
struct Pending {
    write: Write,
    queued_at: Instant,
    written: Option<oneshot::Sender<()>>,
}

/// A write as queued: text deltas stay raw pieces until their batch is
/// sent, so that consecutive ones become one event.
enum Write {
    Job(JobWrite),
    TextDelta(Vec<String>),
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
        self.queue(Write::Job(write), None, writer).await;
    }

    /// Queues pieces of the model's answer, to go out in a `text_delta`
    /// event with the pieces next to them.
    pub async fn push_delta(&self, pieces: Vec<String>, writer: impl FnOnce() -> Writer) {
        self.queue(Write::TextDelta(pieces), None, writer).await;
    }

    /// Queues `write` and waits until it was sent (or refused): it and
    /// those before it go at once.
    pub async fn write(&self, write: JobWrite, writer: impl FnOnce() -> Writer) {
        let (written, sent) = oneshot::channel();
        self.queue(Write::Job(write), Some(written), writer).await;
        let _ = sent.await;
    }

    async fn queue(
        &self,
        write: Write,
        written: Option<oneshot::Sender<()>>,
        writer: impl FnOnce() -> Writer,
    ) {
        let pending = Pending {
            write,
            queued_at: Instant::now(),
            written,
        };
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
        let open = linger(&mut queued, &mut pending, &handed_over).await;
        if handed_over.is_cancelled() {
            while let Ok(more) = queued.try_recv() {
                pending.push(more);
            }
            // No one waits on them any more: the attempt ended.
            return job_writes(pending.drain(..).map(|pending| pending.write));
        }
        let mut waiting = Vec::new();
        let batch = job_writes(pending.drain(..).map(|pending| {
            waiting.extend(pending.written);
            pending.write
        }));
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
        for written in waiting {
            let _ = written.send(());
        }
        if !open {
            break;
        }
    }
    Vec::new()
}

/// Adds to `pending` what is queued until [`LINGER`] has passed since its
/// first write, the batch is full, someone waits on one of its writes, the
/// attempt hands its writes over, or the queue closes (then false).
async fn linger(
    queued: &mut mpsc::Receiver<Pending>,
    pending: &mut Vec<Pending>,
    handed_over: &CancellationToken,
) -> bool {
    let Some(first) = pending.first() else {
        return true;
    };
    let closes = first.queued_at + LINGER;
    while pending.len() < MAX_BATCH && pending.iter().all(|p| p.written.is_none()) {
        let room = MAX_BATCH - pending.len();
        tokio::select! {
            biased;
            () = handed_over.cancelled() => break,
            added = queued.recv_many(pending, room) => {
                if added == 0 {
                    return false;
                }
            }
            () = tokio::time::sleep_until(closes) => break,
        }
    }
    true
}

/// The writes as the queue takes them: each run of text deltas becomes
/// `text_delta` events of up to about [`DELTA_MAX_BYTES`].
fn job_writes(writes: impl IntoIterator<Item = Write>) -> Vec<JobWrite> {
    let mut out = Vec::new();
    let mut text = String::new();
    let delta = |text: &mut String| JobWrite::Event {
        event_type: EventType::TextDelta.as_str().to_owned(),
        data: serde_json::json!({ "text": std::mem::take(text) }).to_string(),
    };
    for write in writes {
        match write {
            Write::TextDelta(pieces) => {
                for piece in pieces {
                    if text.len() >= DELTA_MAX_BYTES {
                        out.push(delta(&mut text));
                    }
                    text.push_str(&piece);
                }
            }
            Write::Job(write) => {
                if !text.is_empty() {
                    out.push(delta(&mut text));
                }
                out.push(write);
            }
        }
    }
    if !text.is_empty() {
        out.push(delta(&mut text));
    }
    out
}

/// The guarded values are replaced whole, never left half-changed.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(write: Write, written: Option<oneshot::Sender<()>>) -> Pending {
        Pending {
            write,
            queued_at: Instant::now(),
            written,
        }
    }

    fn progress(percent: u8) -> Write {
        Write::Job(JobWrite::Progress {
            percent,
            step: String::new(),
        })
    }

    fn delta(text: &str) -> Write {
        Write::TextDelta(vec![text.to_owned()])
    }

    /// A batch begun with one write, and the queue it reads from.
    async fn batch_of(
        first: Write,
    ) -> (mpsc::Sender<Pending>, mpsc::Receiver<Pending>, Vec<Pending>) {
        let (sender, mut receiver) = mpsc::channel(PENDING);
        let _ = sender.send(queued(first, None)).await;
        let mut batch = Vec::new();
        receiver.recv_many(&mut batch, MAX_BATCH).await;
        (sender, receiver, batch)
    }

    #[tokio::test(start_paused = true)]
    async fn writes_made_within_the_linger_join_the_batch_which_then_goes() {
        let (sender, mut receiver, mut batch) = batch_of(progress(10)).await;
        let started = Instant::now();
        let later = tokio::spawn(async move {
            tokio::time::sleep(LINGER / 2).await;
            let _ = sender.send(queued(progress(30), None)).await;
            tokio::time::sleep(LINGER).await;
            let _ = sender.send(queued(progress(90), None)).await;
            sender
        });
        let open = linger(&mut receiver, &mut batch, &CancellationToken::new()).await;
        assert!(open);
        assert_eq!(started.elapsed(), LINGER, "from the first write on");
        assert_eq!(
            batch.len(),
            2,
            "the write after the linger waits for the next batch"
        );
        let _sender = later.await;
        assert!(receiver.recv().await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_someone_waits_for_ends_the_linger_at_once() {
        let (sender, mut receiver, mut batch) = batch_of(progress(10)).await;
        let started = Instant::now();
        let (written, _sent) = oneshot::channel();
        let _ = sender.send(queued(progress(20), Some(written))).await;
        assert!(linger(&mut receiver, &mut batch, &CancellationToken::new()).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(batch.len(), 2, "with the writes before it");
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_attempt_or_of_the_queue_ends_the_linger() {
        let (_sender, mut receiver, mut batch) = batch_of(progress(10)).await;
        let handed_over = CancellationToken::new();
        handed_over.cancel();
        let started = Instant::now();
        assert!(linger(&mut receiver, &mut batch, &handed_over).await);
        assert_eq!(started.elapsed(), Duration::ZERO);

        let (sender, mut receiver, mut batch) = batch_of(progress(10)).await;
        drop(sender);
        let open = linger(&mut receiver, &mut batch, &CancellationToken::new()).await;
        assert!(
            !open,
            "a flushed queue is sent once more, then the writer ends"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(batch.len(), 1);
    }

    fn text_of(write: &JobWrite) -> Option<String> {
        match write {
            JobWrite::Event { event_type, data } if event_type == "text_delta" => {
                let data: serde_json::Value = serde_json::from_str(data).ok()?;
                data["text"].as_str().map(str::to_owned)
            }
            _ => None,
        }
    }

    #[test]
    fn consecutive_deltas_become_one_event_and_other_writes_keep_their_place() {
        let writes = job_writes([
            delta("Hello"),
            delta(", "),
            delta("wörld"),
            progress(90),
            delta("!"),
        ]);
        assert_eq!(writes.len(), 3);
        assert_eq!(text_of(&writes[0]).as_deref(), Some("Hello, wörld"));
        assert!(matches!(writes[1], JobWrite::Progress { percent: 90, .. }));
        assert_eq!(text_of(&writes[2]).as_deref(), Some("!"));
    }

    #[test]
    fn a_delta_that_reaches_the_size_cap_closes_and_pieces_stay_whole() {
        let piece = "x".repeat(1000);
        let sizes = |writes: Vec<JobWrite>| -> Vec<usize> {
            writes
                .iter()
                .map(|write| text_of(write).map_or(0, |text| text.len()))
                .collect()
        };
        let one_by_one = job_writes((0..6).map(|_| delta(&piece)));
        assert_eq!(
            sizes(one_by_one),
            [5000, 1000],
            "the cap is passed by less than one piece"
        );
        let together = job_writes([Write::TextDelta(vec![piece.clone(); 6])]);
        assert_eq!(
            sizes(together),
            [5000, 1000],
            "pieces queued together count one by one"
        );
    }
}
