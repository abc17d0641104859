//! Embedding batches: concurrent requests for the same model are coalesced into
//! one backend call (up to `size` distinct texts, or whatever arrived within
//! `wait`), which takes one limiter token; each caller gets its own vectors back.
//!
//! A batch stays open while it waits for its token, so a slow allowance fills
//! batches instead of queueing half-empty calls. It owns no Redis state: the
//! limiter and the retry loop are the gateway's `Core`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use super::{CallContext, Core, Tries, limiter_error};
use crate::limiter::Scope;
use crate::metrics::ModelOperation;
use crate::models::ModelError;

type Reply = Result<Vec<Vec<f32>>, ModelError>;

pub struct Batcher {
    core: Arc<Core>,
    size: usize,
    wait: Duration,
    /// The batch still accepting texts, per model.
    open: Arc<Mutex<HashMap<String, Arc<Batch>>>>,
}

struct Batch {
    model: String,
    /// The deadline of the caller who opened it bounds the wait for a token.
    deadline: Instant,
    /// Signalled when the batch closes early (full, or displaced by a request
    /// that did not fit), so it need not sit out the rest of `wait`.
    closed_early: Notify,
    data: Mutex<BatchData>,
}

#[derive(Default)]
struct BatchData {
    closed: bool,
    /// Distinct texts, in the order they are sent.
    texts: Vec<String>,
    positions: HashMap<String, usize>,
    /// Per caller: where its texts are in `texts`, and where to send its vectors.
    waiters: Vec<(Vec<usize>, oneshot::Sender<Reply>)>,
}

impl BatchData {
    fn new_texts(&self, texts: &[String]) -> usize {
        let mut seen = std::collections::HashSet::new();
        texts
            .iter()
            .filter(|text| !self.positions.contains_key(*text) && seen.insert(text.as_str()))
            .count()
    }

    fn add(&mut self, texts: Vec<String>, reply: oneshot::Sender<Reply>) {
        let mut slots = Vec::with_capacity(texts.len());
        for text in texts {
            let next = self.texts.len();
            let slot = *self.positions.entry(text.clone()).or_insert(next);
            if slot == next {
                self.texts.push(text);
            }
            slots.push(slot);
        }
        self.waiters.push((slots, reply));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent; a panic cannot corrupt it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Batcher {
    pub fn new(core: Arc<Core>, size: usize, wait: Duration) -> Self {
        Self {
            core,
            size: size.max(1),
            wait,
            open: Arc::default(),
        }
    }

    /// Embeds `texts` as part of a shared batch. A request with `size` texts or
    /// more is sent on its own (still as one call).
    pub async fn embed(&self, model: &str, texts: Vec<String>, deadline: Instant) -> Reply {
        let (reply, answer) = oneshot::channel();
        let new_batch = {
            let mut open = lock(&self.open);
            let mut pending = Some((texts, reply));
            if let Some(batch) = open.get(model).cloned()
                && let Some((texts, reply)) = pending.take()
            {
                let mut data = lock(&batch.data);
                let fits = data.texts.len() + data.new_texts(&texts) <= self.size;
                if !data.closed && fits {
                    data.add(texts, reply);
                } else {
                    // This request starts the next batch.
                    pending = Some((texts, reply));
                }
                if pending.is_some() || data.texts.len() >= self.size {
                    // Full, or displaced: send it now rather than after `wait`.
                    data.closed = true;
                    open.remove(model);
                    batch.closed_early.notify_one();
                }
            }
            pending.map(|(texts, reply)| {
                let alone = texts.len() >= self.size;
                let batch = Arc::new(Batch {
                    model: model.to_owned(),
                    deadline,
                    closed_early: Notify::new(),
                    data: Mutex::new(BatchData {
                        closed: alone,
                        ..BatchData::default()
                    }),
                });
                lock(&batch.data).add(texts, reply);
                if !alone {
                    open.insert(model.to_owned(), batch.clone());
                }
                batch
            })
        };
        if let Some(batch) = new_batch {
            tokio::spawn(flush(
                self.core.clone(),
                self.open.clone(),
                batch,
                self.wait,
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(ModelError::Unavailable(
                "the embedding batch was dropped before it answered".into(),
            ))
        })
    }
}

/// Waits for the batch to fill (or `wait`), takes a token, closes the batch,
/// makes the call through the retry loop and hands each caller its vectors.
async fn flush(
    core: Arc<Core>,
    open: Arc<Mutex<HashMap<String, Arc<Batch>>>>,
    batch: Arc<Batch>,
    wait: Duration,
) {
    if !lock(&batch.data).closed {
        tokio::select! {
            _ = batch.closed_early.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let grant = core.limiter.acquire(Scope::Backend, batch.deadline).await;
    let (texts, waiters) = {
        let mut open = lock(&open);
        if open
            .get(&batch.model)
            .is_some_and(|current| Arc::ptr_eq(current, &batch))
        {
            open.remove(&batch.model);
        }
        let mut data = lock(&batch.data);
        data.closed = true;
        (
            std::mem::take(&mut data.texts),
            std::mem::take(&mut data.waiters),
        )
    };
    let result = match grant {
        Err(error) => Err(limiter_error("embedding-batch", error)),
        Ok(grant) => {
            let context = CallContext {
                job_id: "embedding-batch",
                user_id: None,
                deadline: batch.deadline,
            };
            tracing::debug!(model = %batch.model, texts = texts.len(), callers = waiters.len(), "sending an embedding batch");
            let mut tries = Tries::new(&core, &context, Scope::Backend, Some(grant));
            loop {
                let result = match tries.slot().await {
                    Ok(grant) => {
                        core.stats.backend_calls.fetch_add(1, Ordering::Relaxed);
                        core.stats
                            .texts_sent
                            .fetch_add(texts.len() as u64, Ordering::Relaxed);
                        let started = Instant::now();
                        let result = core.client.embed(Some(&batch.model), &texts).await;
                        core.observe(ModelOperation::Embed, started, result.as_ref().map(|_| ()));
                        tries.settle(grant, result, true).await
                    }
                    Err(error) => Some(Err(error)),
                };
                if let Some(done) = result {
                    break done;
                }
            }
        }
    };
    for (slots, reply) in waiters {
        let answer = match &result {
            Ok(vectors) => slots
                .iter()
                .map(|&slot| vectors.get(slot).cloned())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ModelError::Rejected {
                    status: 200,
                    message: "the backend returned fewer embeddings than texts".into(),
                }),
            Err(error) => Err(error.clone()),
        };
        // A caller that gave up (deadline, cancel) no longer listens; fine.
        let _ = reply.send(answer);
    }
}
