//! Group commit between an instance's workers and Redis. Workers that want a
//! job of the same queue at the same moment share one claim call, and the
//! outcomes ready at the same moment share one finish call: while a call is
//! in flight, the requests that arrive meanwhile wait and go together in the
//! next. An idle instance pays one call per request, as before; a loaded one
//! pays one per batch, so its Redis round trips per job fall as load rises.
//!
//! Owns the two batching tasks of each queue and what a worker gets back. It
//! does not decide what a job runs (the worker does) nor what a claim or an
//! outcome writes (the queue's scripts do). Strict priority and at-least-once
//! are the scripts', unchanged: a batch's jobs come out of Redis in priority
//! order, each started for the worker it goes to, and an entry is
//! acknowledged only when its own outcome is recorded.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::intake::Intake;
use crate::queue::{Claimed, ClaimedJob, Finish, PreparedOutcome};
use spool_runtime::HandlerComponent;

/// At most this many claims or outcomes go in one call.
const MAX_BATCH: usize = 64;

/// A Redis error, shared by every request of the batch it failed.
pub type SharedError = Arc<redis::RedisError>;

/// What a worker's claim got.
pub enum Assigned {
    /// A job started for this worker, with the handler version resolved at
    /// the moment the claim recorded as its start (`None`: not installed).
    Job(Box<ClaimedJob>, Option<HandlerComponent>),
    /// Nothing waiting; `next_retry_ms` is when the earliest retry is due.
    Idle {
        next_retry_ms: Option<u64>,
    },
    Paused,
    /// Redis lost the queue's consumer group and it was made again: ask again.
    Again,
    Unreachable(SharedError),
}

/// The batching tasks of every queue of an instance; dropping it ends them.
pub struct Dispatch {
    desks: HashMap<String, Desk>,
}

struct Desk {
    claims: mpsc::UnboundedSender<ClaimRequest>,
    outcomes: mpsc::UnboundedSender<OutcomeRequest>,
}

struct ClaimRequest {
    consumer: String,
    reply: oneshot::Sender<Assigned>,
}

struct OutcomeRequest {
    outcome: PreparedOutcome,
    reply: oneshot::Sender<Result<Finish, SharedError>>,
}

impl Dispatch {
    /// Starts the batching tasks of every queue the intake routes.
    pub fn start(intake: &Intake) -> Self {
        let desks = intake
            .routes
            .keys()
            .map(|queue| {
                let (claims, claim_requests) = mpsc::unbounded_channel();
                let (outcomes, outcome_requests) = mpsc::unbounded_channel();
                tokio::spawn(claim_batches(intake.clone(), queue.clone(), claim_requests));
                tokio::spawn(outcome_batches(intake.clone(), outcome_requests));
                (queue.clone(), Desk { claims, outcomes })
            })
            .collect();
        Self { desks }
    }

    /// Claims the next job of `queue` for the worker named `consumer`.
    pub async fn claim(&self, queue: &str, consumer: &str) -> Assigned {
        let Some(desk) = self.desks.get(queue) else {
            return Assigned::Idle {
                next_retry_ms: None,
            };
        };
        let (reply, answer) = oneshot::channel();
        let request = ClaimRequest {
            consumer: consumer.to_owned(),
            reply,
        };
        if desk.claims.send(request).is_err() {
            return Assigned::Idle {
                next_retry_ms: None,
            };
        }
        answer.await.unwrap_or(Assigned::Idle {
            next_retry_ms: None,
        })
    }

    /// Records one attempt's outcome, in the next batch of its queue.
    pub async fn finish(
        &self,
        intake: &Intake,
        queue: &str,
        outcome: PreparedOutcome,
    ) -> Result<Finish, SharedError> {
        let Some(desk) = self.desks.get(queue) else {
            // A job of a queue this instance does not route (its
            // configuration changed since): recorded on its own.
            return single(intake, outcome).await;
        };
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = desk.outcomes.send(OutcomeRequest { outcome, reply }) {
            return single(intake, refused.0.outcome).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(Arc::new(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the instance is stopping",
            ))))
        })
    }
}

async fn single(intake: &Intake, outcome: PreparedOutcome) -> Result<Finish, SharedError> {
    let finished = intake
        .queue
        .finish_many(std::slice::from_ref(&outcome))
        .await;
    match finished.map(|mut finished| finished.pop()) {
        Ok(Some(finish)) => finish.map_err(Arc::new),
        Ok(None) => Ok(Finish::Lost),
        Err(error) => Err(Arc::new(error)),
    }
}

/// Takes what waits in `requests` after `first`, up to [`MAX_BATCH`].
fn batch_from<T>(first: T, requests: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match requests.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    batch
}

async fn claim_batches(
    intake: Intake,
    queue: String,
    mut requests: mpsc::UnboundedReceiver<ClaimRequest>,
) {
    let Some(route) = intake.routes.get(&queue) else {
        return;
    };
    while let Some(first) = requests.recv().await {
        let batch = batch_from(first, &mut requests);
        // The version is resolved at the moment the claim records as the
        // jobs' start, not once the claim is back: under load that round trip
        // is long enough for a switch to land inside it.
        let resolved = intake.registry.resolve_stamped(
            &route.config.handler,
            route.config.handler_version.as_deref(),
        );
        let consumers: Vec<&str> = batch.iter().map(|r| r.consumer.as_str()).collect();
        let claimed = intake
            .queue
            .claim_many(
                &route.keys,
                &consumers,
                resolved.at_ms,
                route.config.fair_every,
            )
            .await;
        let (mut jobs, otherwise) = match claimed {
            Ok(Claimed::Jobs {
                jobs,
                dropped,
                next_retry_ms,
            }) => {
                for job_id in dropped {
                    tracing::error!(%queue, job = %job_id, "a queued job's record is gone (evicted or deleted outside spool); its entry was dropped and counted");
                }
                (jobs.into_iter(), Otherwise::Idle(next_retry_ms))
            }
            Ok(Claimed::Paused) => (Vec::new().into_iter(), Otherwise::Paused),
            Ok(Claimed::Again) => (Vec::new().into_iter(), Otherwise::Again),
            Err(error) => (
                Vec::new().into_iter(),
                Otherwise::Unreachable(Arc::new(error)),
            ),
        };
        for request in batch {
            let assigned = match jobs.next() {
                Some(job) => Assigned::Job(Box::new(job), resolved.handler.clone()),
                None => otherwise.assigned(),
            };
            if let Err(Assigned::Job(job, _)) = request.reply.send(assigned) {
                tracing::warn!(job = %job.record.id, "the worker a job was claimed for has stopped; recovery requeues the job");
            }
        }
    }
}

/// What the workers a batch found no job for get.
enum Otherwise {
    Idle(Option<u64>),
    Paused,
    Again,
    Unreachable(SharedError),
}

impl Otherwise {
    fn assigned(&self) -> Assigned {
        match self {
            Self::Idle(next_retry_ms) => Assigned::Idle {
                next_retry_ms: *next_retry_ms,
            },
            Self::Paused => Assigned::Paused,
            Self::Again => Assigned::Again,
            Self::Unreachable(error) => Assigned::Unreachable(error.clone()),
        }
    }
}

async fn outcome_batches(intake: Intake, mut requests: mpsc::UnboundedReceiver<OutcomeRequest>) {
    while let Some(first) = requests.recv().await {
        let (outcomes, replies): (Vec<_>, Vec<_>) = batch_from(first, &mut requests)
            .into_iter()
            .map(|request| (request.outcome, request.reply))
            .unzip();
        match intake.queue.finish_many(&outcomes).await {
            Ok(finished) => {
                for (reply, finish) in replies.into_iter().zip(finished) {
                    let _ = reply.send(finish.map_err(Arc::new));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
