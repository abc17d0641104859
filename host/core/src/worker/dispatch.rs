//! Group commit between an instance's workers and Redis. The workers that
//! want a job of the same queue at the same moment, and the outcomes ready
//! at that moment, share one call: while the queue's calls are in flight
//! ([`CALLS_IN_FLIGHT`] at most), the requests that arrive meanwhile wait and
//! go together in the next. A worker that records an outcome asks for its next job with it
//! (`settle.lua`), so a loaded queue pays one call per batch for both, as
//! BullMQ's move-to-finished fetches the next job. An idle instance pays one
//! call per request, as before.
//!
//! A queue whose last claim found nothing is not asked again until work is
//! announced for it (`dry`): a worker passing by it is told it is idle.
//!
//! Owns each queue's batching task and what a worker gets back. It does not
//! decide what a job runs (the worker does) nor what a claim or an outcome
//! writes (the queue's scripts do). Strict priority and at-least-once are
//! the scripts', unchanged: a batch's jobs come out of Redis in priority
//! order, each started for the worker it goes to, after the batch's
//! outcomes, and an entry is acknowledged only when its own outcome is
//! recorded.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::dry::DryQueues;
use crate::intake::{Intake, Route};
use crate::queue::{Claimed, ClaimedJob, Finish, PreparedOutcome, Settled};
use crate::registry::Resolved;
use spool_runtime::HandlerComponent;

/// At most this many claims and outcomes go in one call.
const MAX_BATCH: usize = 64;
/// Calls of one queue that may run at once. With one, the host's work on a
/// reply and Redis' work on the next batch never overlapped, and a loaded
/// instance left both half idle. In interleaved `spool bench-compare` runs
/// (one worker thread, Redis on the other core), three against two moved
/// ~13 % more no-op jobs/s at concurrency 64 and a few % more at 16 and on
/// the chat path; more make batches smaller, so calls more.
const CALLS_IN_FLIGHT: usize = 3;

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

/// What recording an outcome got: how it was recorded and, when the worker
/// asked for it and the outcome let it (recorded, or the job lost), what
/// the claim of its next job got.
pub struct Recorded {
    pub finish: Result<Finish, SharedError>,
    pub next: Option<Assigned>,
}

/// The batching tasks of every queue of an instance; dropping it ends them.
pub struct Dispatch {
    desks: HashMap<String, mpsc::UnboundedSender<Request>>,
    dry: Arc<DryQueues>,
}

enum Request {
    Claim {
        consumer: String,
        reply: oneshot::Sender<Assigned>,
    },
    Finish {
        outcome: Box<PreparedOutcome>,
        /// The worker that wants its next job with the outcome.
        next: Option<String>,
        reply: oneshot::Sender<Recorded>,
    },
}

impl Dispatch {
    /// Starts the batching task of every queue the intake routes; `dry`
    /// learns of their work announcements from the instance's subscription.
    pub fn start(intake: &Intake, dry: Arc<DryQueues>) -> Self {
        let desks = intake
            .routes
            .keys()
            .map(|queue| {
                let (desk, requests) = mpsc::unbounded_channel();
                let batching = batches(intake.clone(), dry.clone(), queue.clone(), requests);
                tokio::spawn(batching);
                (queue.clone(), desk)
            })
            .collect();
        Self { desks, dry }
    }

    /// Claims the next job of `queue` for the worker named `consumer`.
    pub async fn claim(&self, queue: &str, consumer: &str) -> Assigned {
        if let Some(next_retry_ms) = self.dry.is_dry(queue) {
            return Assigned::Idle { next_retry_ms };
        }
        let idle = || Assigned::Idle {
            next_retry_ms: None,
        };
        let Some(desk) = self.desks.get(queue) else {
            return idle();
        };
        let (reply, answer) = oneshot::channel();
        let request = Request::Claim {
            consumer: consumer.to_owned(),
            reply,
        };
        if desk.send(request).is_err() {
            return idle();
        }
        answer.await.unwrap_or_else(|_| idle())
    }

    /// Records one attempt's outcome, in the next batch of its queue, and
    /// with `next` claims that worker's next job of the queue in the same
    /// call.
    pub async fn finish(
        &self,
        intake: &Intake,
        queue: &str,
        outcome: PreparedOutcome,
        next: Option<&str>,
    ) -> Recorded {
        let Some(desk) = self.desks.get(queue) else {
            // A job of a queue this instance does not route (its
            // configuration changed since): recorded on its own.
            return single(intake, outcome).await;
        };
        let (reply, answer) = oneshot::channel();
        let request = Request::Finish {
            outcome: Box::new(outcome),
            next: next.map(str::to_owned),
            reply,
        };
        if let Err(mpsc::error::SendError(Request::Finish { outcome, .. })) = desk.send(request) {
            return single(intake, *outcome).await;
        }
        answer.await.unwrap_or_else(|_| Recorded {
            finish: Err(Arc::new(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the instance is stopping",
            )))),
            next: None,
        })
    }
}

async fn single(intake: &Intake, outcome: PreparedOutcome) -> Recorded {
    let finished = intake
        .queue
        .finish_many(std::slice::from_ref(&outcome))
        .await;
    let finish = match finished.map(|mut finished| finished.pop()) {
        Ok(Some(finish)) => finish.map_err(Arc::new),
        Ok(None) => Ok(Finish::Lost),
        Err(error) => Err(Arc::new(error)),
    };
    Recorded { finish, next: None }
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

/// One queue's batching task: each batch is one call, a claim alone, or
/// outcomes with the claims of the batch (`settle`). Up to
/// [`CALLS_IN_FLIGHT`] calls run at once; requests that arrive while they
/// all do wait and go together in the next.
async fn batches(
    intake: Intake,
    dry: Arc<DryQueues>,
    queue: String,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let in_flight = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    while let Some(first) = requests.recv().await {
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // The workers a reply just handed jobs to finish them in a burst: let
        // the ones ready to run queue their outcomes before this batch closes,
        // or the first of them goes alone and the rest follow in a second
        // call. Interleaved `spool bench-compare` runs: 2.4 jobs per call at
        // concurrency 16 against 1.6, ~9 % less Redis CPU per no-op job.
        tokio::task::yield_now().await;
        let mut claims = Vec::new();
        let mut outcomes = Outcomes::default();
        for request in batch_from(first, &mut requests) {
            match request {
                Request::Claim { consumer, reply } => claims.push((consumer, reply)),
                Request::Finish {
                    outcome,
                    next,
                    reply,
                } => {
                    outcomes.prepared.push(*outcome);
                    outcomes.next.push(next);
                    outcomes.replies.push(reply);
                }
            }
        }
        let intake = intake.clone();
        let dry = dry.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            let Some(route) = intake.routes.get(&queue) else {
                return;
            };
            let seen = dry.seen(&queue);
            // The version is resolved at the moment the claim records as
            // the jobs' start, not once the claim is back: under load that
            // round trip is long enough for a switch to land inside it.
            let resolved = intake.registry.resolve_stamped(
                &route.config.handler,
                route.config.handler_version.as_deref(),
            );
            let found = if outcomes.prepared.is_empty() {
                claim_batch(&intake, route, resolved, claims).await
            } else {
                settle_batch(&intake, route, resolved, claims, outcomes).await
            };
            drop(slot);
            match found {
                Found::Work => dry.had_work(&queue),
                Found::Nothing { next_retry_ms } => dry.ran_dry(&queue, seen, next_retry_ms),
                Found::Unknown => {}
            }
        });
    }
}

type ClaimRequest = (String, oneshot::Sender<Assigned>);

/// What a batch's claim found of its queue.
enum Found {
    /// A job for every worker that asked.
    Work,
    /// Fewer jobs than workers asking: the queue is empty for now.
    Nothing { next_retry_ms: Option<u64> },
    /// No worker asked, or the claim did not run.
    Unknown,
}

/// A batch's outcomes, in order, with the worker each one's call claims a
/// next job for and where its answer goes.
#[derive(Default)]
struct Outcomes {
    prepared: Vec<PreparedOutcome>,
    next: Vec<Option<String>>,
    replies: Vec<oneshot::Sender<Recorded>>,
}

async fn claim_batch(
    intake: &Intake,
    route: &Route,
    resolved: Resolved,
    claims: Vec<ClaimRequest>,
) -> Found {
    let consumers: Vec<&str> = claims.iter().map(|(c, _)| c.as_str()).collect();
    let claimed = intake
        .queue
        .claim_many(
            &route.keys,
            &consumers,
            resolved.at_ms,
            route.config.fair_every,
        )
        .await;
    let mut handed = Handed::new(&route.keys.name, claimed, resolved.handler);
    for (_, reply) in claims {
        handed.send(reply);
    }
    handed.found()
}

async fn settle_batch(
    intake: &Intake,
    route: &Route,
    resolved: Resolved,
    claims: Vec<ClaimRequest>,
    outcomes: Outcomes,
) -> Found {
    let alone: Vec<&str> = claims.iter().map(|(c, _)| c.as_str()).collect();
    let next: Vec<Option<&str>> = outcomes.next.iter().map(Option::as_deref).collect();
    let settled = intake
        .queue
        .settle(
            &route.keys,
            &alone,
            &outcomes.prepared,
            &next,
            resolved.at_ms,
            route.config.fair_every,
        )
        .await;
    let Settled { finished, claimed } = match settled {
        Ok(settled) => settled,
        Err(error) => {
            let error = Arc::new(error);
            for (_, reply) in claims {
                let _ = reply.send(Assigned::Unreachable(error.clone()));
            }
            for reply in outcomes.replies {
                let _ = reply.send(Recorded {
                    finish: Err(error.clone()),
                    next: None,
                });
            }
            return Found::Unknown;
        }
    };
    // The claim served the consumers that asked alone, then those whose
    // outcome freed them, in order (see `Queue::settle`).
    let claimed = claimed.unwrap_or(Ok(Claimed::Jobs {
        jobs: Vec::new(),
        dropped: Vec::new(),
        next_retry_ms: None,
    }));
    let mut handed = Handed::new(&route.keys.name, claimed, resolved.handler);
    for (_, reply) in claims {
        handed.send(reply);
    }
    let answers = finished.into_iter().zip(outcomes.replies);
    for ((finish, reply), next) in answers.zip(outcomes.next) {
        let next = match (&finish, next) {
            (Ok(done), Some(_)) if done.frees_worker() => Some(handed.next()),
            _ => None,
        };
        let recorded = Recorded {
            finish: finish.map_err(Arc::new),
            next,
        };
        if let Err(Recorded {
            next: Some(Assigned::Job(job, _)),
            ..
        }) = reply.send(recorded)
        {
            warn_orphaned(&job);
        }
    }
    handed.found()
}

/// The jobs one claim got, handed out in order to the workers it served.
struct Handed {
    jobs: std::vec::IntoIter<ClaimedJob>,
    otherwise: Otherwise,
    handler: Option<HandlerComponent>,
    /// Workers handed a job, and whether one was left without.
    given: usize,
    short: bool,
}

impl Handed {
    fn new(
        queue: &str,
        claimed: redis::RedisResult<Claimed>,
        handler: Option<HandlerComponent>,
    ) -> Self {
        let (jobs, otherwise) = match claimed {
            Ok(Claimed::Jobs {
                jobs,
                dropped,
                next_retry_ms,
            }) => {
                for job_id in dropped {
                    tracing::error!(%queue, job = %job_id, "a queued job's record is gone (evicted or deleted outside spool); its entry was dropped and counted");
                }
                (jobs, Otherwise::Idle(next_retry_ms))
            }
            Ok(Claimed::Paused) => (Vec::new(), Otherwise::Paused),
            Ok(Claimed::Again) => (Vec::new(), Otherwise::Again),
            Err(error) => (Vec::new(), Otherwise::Unreachable(Arc::new(error))),
        };
        Self {
            jobs: jobs.into_iter(),
            otherwise,
            handler,
            given: 0,
            short: false,
        }
    }

    /// What the next worker in line gets.
    fn next(&mut self) -> Assigned {
        match self.jobs.next() {
            Some(job) => {
                self.given += 1;
                Assigned::Job(Box::new(job), self.handler.clone())
            }
            None => {
                self.short = true;
                self.otherwise.assigned()
            }
        }
    }

    /// What the claim found of its queue, once every worker it served was
    /// handed what it got.
    fn found(&self) -> Found {
        match (&self.otherwise, self.short) {
            (Otherwise::Idle(next_retry_ms), true) => Found::Nothing {
                next_retry_ms: *next_retry_ms,
            },
            (_, false) if self.given > 0 => Found::Work,
            _ => Found::Unknown,
        }
    }

    fn send(&mut self, reply: oneshot::Sender<Assigned>) {
        if let Err(Assigned::Job(job, _)) = reply.send(self.next()) {
            warn_orphaned(&job);
        }
    }
}

fn warn_orphaned(job: &ClaimedJob) {
    tracing::warn!(job = %job.record.id, "the worker a job was claimed for has stopped; recovery requeues the job");
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
