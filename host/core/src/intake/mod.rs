//! Admission: the one way a job enters a queue. Runs the queue's priority rule
//! (the handler's `admit` hook, in Wasm) and enqueues the job in its class's
//! stream. Shared by the HTTP and WebSocket APIs, session tasks and the
//! follow-up jobs a finished job hands on; it knows nothing of HTTP or of
//! what a job does.

mod group;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::QueueConfig;
use crate::metrics::{self, Hook};
use crate::queue::{
    BoundMessage, BulkItem, BulkSubmitError, Fence, NewJob, Queue, QueueKeys, SubmitError,
    class_name,
};
use crate::registry::Registry;
use spool_runtime::{Admitted, FailureKind, HandlerComponent, Job, PriorityDecision, Runtime};

/// Told of the jobs this instance queued, once Redis holds them, so that
/// its own idle workers wake for each at once. The queue's Pub/Sub
/// announcement wakes one worker per submission call (on every instance),
/// and the others follow one at a time, each as the one before found work:
/// a claim's round trip between the starts of one call's jobs.
pub trait Announce: Send + Sync {
    fn queued(&self, queue: &str, jobs: usize);
}

/// The fields the host itself reads from a submission; the handler reads the
/// payload.
#[derive(Clone, Debug, Default)]
pub struct Submission {
    pub user_id: String,
    pub user_tier: String,
    /// 1..=10, the client's priority (design E); the handler turns it into a class.
    pub priority: u8,
    pub payload: String,
    /// The session message the job will drive, if any (see [`BoundMessage`]).
    pub message: Option<BoundMessage>,
    /// The id the client chose (an idempotency key), else a fresh one. A
    /// second submission under a taken id is [`IntakeError::Duplicate`].
    pub job_id: Option<String>,
    /// For a follow-up job: the fence of the attempt that asked for it; the
    /// job is queued only while that attempt still owns its own job.
    pub parent: Option<Fence>,
}

/// What the queue made of an accepted submission.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub id: String,
    pub queue: String,
    pub class: &'static str,
    pub score: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("no queue named `{queue}`; known queues: {known}")]
    UnknownQueue { queue: String, known: String },
    #[error("handler `{0}` is not loaded")]
    HandlerUnavailable(String),
    #[error("{0}")]
    Rejected(String),
    #[error("the priority rule failed: {0}")]
    HandlerFailed(String),
    #[error("queue `{0}` is full; retry later")]
    Full(String),
    /// The id is taken: the job was queued before (a follow-up handed on twice).
    #[error("job `{0}` already exists")]
    Duplicate(String),
    /// The attempt asking for a follow-up lost its job: nothing was queued.
    #[error("the attempt asking for this follow-up no longer owns its job")]
    Fenced,
    /// The job asking for a follow-up was cancelled: nothing was queued.
    #[error("the job asking for this follow-up was cancelled")]
    ParentCancelled,
    #[error("the job store is unavailable: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Why a batch was refused: nothing of it was queued.
#[derive(Debug, thiserror::Error)]
pub enum BulkIntakeError {
    /// Something that concerns the whole batch (unknown queue, no handler, Redis).
    #[error(transparent)]
    Batch(IntakeError),
    /// The handler refused these items (index from 0, why).
    #[error("{} of the batch's jobs were refused", .0.len())]
    Items(Vec<(usize, IntakeError)>),
    /// The id of the item at this index names another queue's or user's job.
    #[error("item {0}'s job id is taken by another job")]
    Taken(usize),
}

impl From<IntakeError> for BulkIntakeError {
    fn from(error: IntakeError) -> Self {
        Self::Batch(error)
    }
}

/// One item of an accepted batch.
#[derive(Clone, Debug)]
pub struct BulkAccepted {
    pub accepted: Accepted,
    /// The id already named a job: nothing new was queued for this item.
    pub duplicate: bool,
}

/// A queue as intake and the workers serve it: its keys and its settings.
#[derive(Clone, Debug)]
pub struct Route {
    pub keys: QueueKeys,
    pub config: QueueConfig,
}

#[derive(Clone)]
pub struct Intake {
    pub queue: Queue,
    pub runtime: Arc<Runtime>,
    pub registry: Arc<Registry>,
    pub routes: Arc<BTreeMap<String, Route>>,
    submissions: Arc<group::Submissions>,
    announce: Arc<dyn Announce>,
}

impl Intake {
    /// Intake for `routes`, with the task that group-commits each one's
    /// single submissions (see `group`).
    pub fn new(
        queue: Queue,
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        routes: BTreeMap<String, Route>,
        announce: Arc<dyn Announce>,
    ) -> Self {
        Self {
            submissions: Arc::new(group::Submissions::start(&queue, &routes)),
            announce,
            queue,
            runtime,
            registry,
            routes: Arc::new(routes),
        }
    }

    pub fn route(&self, queue: &str) -> Result<&Route, IntakeError> {
        self.routes
            .get(queue)
            .ok_or_else(|| IntakeError::UnknownQueue {
                queue: queue.to_owned(),
                known: self.routes.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// The queue's route and the handler version its jobs run now.
    fn route_and_handler(&self, queue: &str) -> Result<(&Route, HandlerComponent), IntakeError> {
        let route = self.route(queue)?;
        let handler = self
            .registry
            .resolve(
                &route.config.handler,
                route.config.handler_version.as_deref(),
            )
            .ok_or_else(|| IntakeError::HandlerUnavailable(route.config.handler.clone()))?;
        Ok((route, handler))
    }

    /// Admits and enqueues a job under a fresh id.
    pub async fn submit(
        &self,
        queue: &str,
        submission: &Submission,
    ) -> Result<Accepted, IntakeError> {
        let id = submission
            .job_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        self.submit_with_id(queue, id, submission).await
    }

    /// [`Intake::submit`] under an id the caller chose; refused with
    /// [`IntakeError::Duplicate`] if a job with that id exists.
    pub async fn submit_with_id(
        &self,
        queue: &str,
        id: String,
        submission: &Submission,
    ) -> Result<Accepted, IntakeError> {
        let (route, handler) = self.route_and_handler(queue)?;
        let decision = self.admit(&handler, queue, &id, submission).await?;
        let score = decision.score.clamp(1, 10);
        let new_job = NewJob {
            id: &id,
            queue: &route.keys,
            class: decision.class,
            score,
            priority: submission.priority,
            user_id: &submission.user_id,
            user_tier: &submission.user_tier,
            payload: &submission.payload,
            message: submission.message.as_ref(),
            handler: &handler.name,
            max_waiting: route.config.max_waiting,
            parent: submission.parent.as_ref(),
        };
        match self.submissions.submit(&self.queue, new_job).await {
            Ok(_) => {
                self.announce.queued(queue, 1);
                metrics::job_submitted(queue, decision.class);
                Ok(Accepted {
                    id,
                    queue: queue.to_owned(),
                    class: class_name(decision.class),
                    score,
                })
            }
            Err(SubmitError::Full(queue)) => Err(IntakeError::Full(queue)),
            Err(SubmitError::Duplicate) => Err(IntakeError::Duplicate(id)),
            Err(SubmitError::Fenced) => Err(IntakeError::Fenced),
            Err(SubmitError::ParentCancelled) => Err(IntakeError::ParentCancelled),
            Err(SubmitError::Redis(error)) => Err(error.into()),
        }
    }
}

impl Intake {
    /// Admits every submission of a batch (in Wasm, one fresh instance each),
    /// then enqueues the whole batch in one script call, or nothing: any
    /// refused item refuses the batch, naming each. `owner`: the tenant whose
    /// jobs a repeated id may name (`None`: any).
    pub async fn submit_bulk(
        &self,
        queue: &str,
        submissions: &[Submission],
        owner: Option<&str>,
    ) -> Result<Vec<BulkAccepted>, BulkIntakeError> {
        let (route, handler) = self.route_and_handler(queue)?;
        let ids: Vec<String> = submissions
            .iter()
            .map(|s| {
                s.job_id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
            })
            .collect();
        let mut decisions = Vec::with_capacity(submissions.len());
        let mut refused = Vec::new();
        for (index, (submission, id)) in submissions.iter().zip(&ids).enumerate() {
            match self.admit(&handler, queue, id, submission).await {
                Ok(decision) => decisions.push(decision),
                Err(error) => refused.push((index, error)),
            }
        }
        if !refused.is_empty() {
            return Err(BulkIntakeError::Items(refused));
        }
        let new_jobs: Vec<NewJob<'_>> = submissions
            .iter()
            .zip(&ids)
            .zip(&decisions)
            .map(|((submission, id), decision)| NewJob {
                id,
                queue: &route.keys,
                class: decision.class,
                score: decision.score.clamp(1, 10),
                priority: submission.priority,
                user_id: &submission.user_id,
                user_tier: &submission.user_tier,
                payload: &submission.payload,
                message: None,
                handler: &handler.name,
                max_waiting: route.config.max_waiting,
                parent: None,
            })
            .collect();
        let items = match self.queue.submit_bulk(&new_jobs, owner).await {
            Ok(items) => items,
            Err(BulkSubmitError::Full(queue)) => return Err(IntakeError::Full(queue).into()),
            Err(BulkSubmitError::Taken(index)) => return Err(BulkIntakeError::Taken(index)),
            Err(BulkSubmitError::Mixed) => {
                return Err(IntakeError::HandlerFailed("a batch mixed queues".into()).into());
            }
            Err(BulkSubmitError::Redis(error)) => return Err(IntakeError::Redis(error).into()),
        };
        let queued = items
            .iter()
            .filter(|item| matches!(item, BulkItem::Queued(_)))
            .count();
        self.announce.queued(queue, queued);
        Ok(new_jobs
            .iter()
            .zip(items)
            .map(|(job, item)| {
                let duplicate = item == BulkItem::Duplicate;
                if !duplicate {
                    metrics::job_submitted(queue, job.class);
                }
                BulkAccepted {
                    accepted: Accepted {
                        id: job.id.to_owned(),
                        queue: queue.to_owned(),
                        class: class_name(job.class),
                        score: job.score,
                    },
                    duplicate,
                }
            })
            .collect())
    }

    /// Runs the queue's priority rule (the handler's `admit`) on one
    /// submission, or reuses the decision it made for the same declared
    /// inputs (WIT `admission`), and counts which; a refusal or a guest failure is the
    /// submission's error.
    async fn admit(
        &self,
        handler: &HandlerComponent,
        queue: &str,
        id: &str,
        submission: &Submission,
    ) -> Result<PriorityDecision, IntakeError> {
        let job = Job {
            id: id.to_owned(),
            queue: queue.to_owned(),
            user_id: submission.user_id.clone(),
            user_tier: submission.user_tier.clone(),
            priority: submission.priority,
            payload: submission.payload.clone(),
            attempt: 0,
        };
        let started = std::time::Instant::now();
        let admitted = match self.runtime.admit_or_reuse(handler, &job).await {
            Admitted::Reused(decision) => {
                metrics::admit_reused(&handler.name, &handler.version);
                Ok(decision)
            }
            Admitted::Called(admitted) => {
                let failure = match &admitted {
                    Ok(Ok(_)) => None,
                    Ok(Err(_)) => Some(FailureKind::Rejected),
                    Err(failure) => Some(failure.kind()),
                };
                metrics::handler_called(
                    Hook::Admit,
                    &handler.name,
                    &handler.version,
                    started.elapsed(),
                    failure,
                );
                admitted
            }
        };
        match admitted {
            Ok(Ok(decision)) => Ok(decision),
            Ok(Err(reason)) => Err(IntakeError::Rejected(reason)),
            Err(failure) => Err(IntakeError::HandlerFailed(failure.to_string())),
        }
    }
}
