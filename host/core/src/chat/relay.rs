//! Bot answers into conversations: every event of a user message's bot job
//! (text deltas, progress, the final result) is appended to the conversation
//! and published like any frame, exactly once, by whichever instance holds
//! the job's relay lease.
//!
//! A scheduled relay is a field of `chat:relays` (job -> conversation). Every
//! instance sweeps that hash; one that takes a job's lease (`SET NX PX`)
//! follows the job's events through the hub from the job's relay cursor and
//! appends each in `relay.lua`, which checks the lease and the cursor in the
//! same step. An instance that dies stops renewing its leases and another
//! takes over where the cursor stands. After the job's last event the relay
//! is dropped from the registry, then its cursor and lease. Event data is
//! copied, never read. (Key names: [`ConversationKeys`].)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::connection::RedisConnection;
use redis::{AsyncCommands, RedisResult, Script};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::keys::RELAYS;
use super::{ConversationId, ConversationKeys, Conversations};
use crate::events::JobEvents;
use crate::follow::{Follower, Step};
use crate::hub::Hub;
use crate::queue::Queue;

/// The hub's watcher caps count relays under this holder.
const HOLDER: &str = "conversation-relay";
/// How long a relay waits for its job to be queued: the relay is recorded
/// first, so that an instance dying in between loses no answer.
const JOB_GRACE: Duration = Duration::from_secs(30);

/// The relays of this instance; share it behind an `Arc`.
pub struct Relays {
    conversations: Conversations,
    hub: Hub,
    queue: Queue,
    /// This instance's lease value: unique per process.
    holder: String,
    quiet: Duration,
    relay: Script,
    renew: Script,
    active: Mutex<HashSet<String>>,
    nudge: Notify,
}

impl Relays {
    pub fn new(
        conversations: Conversations,
        hub: Hub,
        queue: Queue,
        instance: &str,
        quiet: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            conversations,
            hub,
            queue,
            holder: format!("{instance}-{}", uuid::Uuid::now_v7()),
            quiet,
            relay: Script::new(include_str!("relay.lua")),
            renew: Script::new(include_str!("renew.lua")),
            active: Mutex::default(),
            nudge: Notify::new(),
        })
    }

    fn redis(&self) -> RedisConnection {
        self.conversations.connection()
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.conversations.config().relay_lease_ms)
    }

    /// Relays `job`'s events into `conversation` from now on (written before
    /// the job is queued, so no answer goes unrelayed).
    pub async fn schedule(&self, job: &str, conversation: &ConversationId) -> RedisResult<()> {
        let () = self
            .redis()
            .hset(RELAYS, job, conversation.as_str())
            .await?;
        self.nudge.notify_one();
        Ok(())
    }

    /// Drops a relay whose job was not queued after all.
    pub async fn cancel(&self, job: &str) -> RedisResult<()> {
        let () = self.redis().hdel(RELAYS, job).await?;
        Ok(())
    }

    /// Sweeps for relays without a live holder until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.sweep().await {
                tracing::warn!(%error, "could not sweep conversation relays");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.nudge.notified() => {}
                () = tokio::time::sleep(self.lease() / 3) => {}
            }
        }
    }

    async fn sweep(self: &Arc<Self>) -> RedisResult<()> {
        let relays: Vec<(String, String)> = self.redis().hgetall(RELAYS).await?;
        for (job, conversation) in relays {
            let Some(conversation) = ConversationId::parse(&conversation) else {
                let () = self.redis().hdel(RELAYS, &job).await?;
                continue;
            };
            if lock(&self.active).contains(&job) {
                continue;
            }
            let keys = self.conversations.keys(&conversation);
            let taken: Option<String> = redis::cmd("SET")
                .arg(keys.lease(&job))
                .arg(&self.holder)
                .arg("NX")
                .arg("PX")
                .arg(self.lease().as_millis() as u64)
                .query_async(&mut self.redis())
                .await?;
            if taken.is_none() {
                continue;
            }
            lock(&self.active).insert(job.clone());
            let relays = self.clone();
            tokio::spawn(async move {
                if let Err(error) = relays.relay(&job, &conversation, &keys).await {
                    tracing::warn!(%job, %error, "relaying a bot answer stopped; it resumes from its cursor");
                    // Let another sweep (here or elsewhere) take it at once.
                    let _ = relays.release(&job, &keys).await;
                }
                lock(&relays.active).remove(&job);
            });
        }
        Ok(())
    }

    /// Follows one job's events into its conversation while holding its lease.
    async fn relay(
        &self,
        job: &str,
        conversation: &ConversationId,
        keys: &ConversationKeys,
    ) -> anyhow::Result<()> {
        let source = match self.await_job(job, keys).await? {
            true => JobEvents::find(&self.queue, job).await?,
            false => None,
        };
        let Some(source) = source else {
            let () = self.redis().hdel(RELAYS, job).await?;
            return Ok(());
        };
        let cursor: Option<String> = self.redis().hget(&keys.cursors, job).await?;
        let after = cursor.unwrap_or_else(|| "0".into());
        let mut follower = Follower::open(&self.hub, source, &after, self.quiet, HOLDER).await?;
        let mut renewal = tokio::time::interval(self.lease() / 3);
        loop {
            tokio::select! {
                step = follower.next() => match step {
                    Some(Step::Entry(event)) => {
                        let frame = json!({
                            "type": "event", "conversationId": conversation.as_str(), "jobId": job,
                            "event": event.event_type, "data": event.data, "timestamp": event.timestamp,
                        });
                        let outcome: String = self.relay
                            .key(keys.lease(job)).key(&keys.stream).key(&keys.cursors)
                            .arg(&self.holder).arg(job).arg(&event.id).arg(frame.to_string())
                            .arg(self.conversations.config().max_entries).arg(conversation.channel())
                            .arg(self.lease().as_millis() as u64)
                            .invoke_async(&mut self.redis()).await?;
                        if outcome == "lost" {
                            anyhow::bail!("the relay lease passed to another instance");
                        }
                    }
                    Some(Step::Quiet) => {}
                    Some(Step::Interrupted(interruption)) => {
                        anyhow::bail!("the job's events were cut off ({})", interruption.cause.code());
                    }
                    // Ended: the last event is relayed (or was trimmed or
                    // expired). The registry entry goes first: the cursor
                    // keeps a relay taken over meanwhile from repeating.
                    None => {
                        let mut redis = self.redis();
                        let () = redis.hdel(RELAYS, job).await?;
                        let () = redis.hdel(&keys.cursors, job).await?;
                        self.release(job, keys).await?;
                        return Ok(());
                    }
                },
                _ = renewal.tick() => {
                    let held: i64 = self.renew.key(keys.lease(job)).arg(&self.holder)
                        .arg(self.lease().as_millis() as u64).invoke_async(&mut self.redis()).await?;
                    if held == 0 {
                        anyhow::bail!("the relay lease expired");
                    }
                }
            }
        }
    }

    /// Waits, holding the lease, for a job whose relay was recorded before
    /// it was queued; false when it never came within [`JOB_GRACE`].
    async fn await_job(&self, job: &str, keys: &ConversationKeys) -> anyhow::Result<bool> {
        let started = tokio::time::Instant::now();
        let mut renewed = started;
        loop {
            if self.queue.job(job).await?.is_some() {
                return Ok(true);
            }
            if started.elapsed() >= JOB_GRACE {
                return Ok(false);
            }
            // Usually the job is queued a moment after its relay: a short
            // poll keeps the bot's first frame from waiting on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
            if renewed.elapsed() < self.lease() / 3 {
                continue;
            }
            renewed = tokio::time::Instant::now();
            let held: i64 = self
                .renew
                .key(keys.lease(job))
                .arg(&self.holder)
                .arg(self.lease().as_millis() as u64)
                .invoke_async(&mut self.redis())
                .await?;
            if held == 0 {
                anyhow::bail!("the relay lease expired");
            }
        }
    }

    /// Gives a lease up if this instance still holds it.
    async fn release(&self, job: &str, keys: &ConversationKeys) -> RedisResult<()> {
        let _: i64 = self
            .renew
            .key(keys.lease(job))
            .arg(&self.holder)
            .arg(1)
            .invoke_async(&mut self.redis())
            .await?;
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
