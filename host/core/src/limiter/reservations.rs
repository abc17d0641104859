//! Group commit of the limiter's checks. The checks an instance makes while
//! its last `acquire.lua` call is on its way to Redis wait, and go together
//! in the next, each answered as if it had come alone (in order, at the same
//! Redis instant), as submissions and claims do (`intake::group`,
//! `worker::dispatch`). Many concurrent model calls then cost one script
//! call per batch instead of one each, and wait less behind one another in
//! Redis; a quiet instance pays one call per check, as before.
//!
//! Owns the script call, its batching task and the reply's shape. What a
//! verdict means for the caller (sleep, confirm, give up) is the limiter's.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::LimitsConfig;
use crate::connection::RedisConnection;

/// At most this many checks go in one call.
const MAX_BATCH: usize = 64;

/// Which buckets a check takes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// The backend's bucket and the user's.
    Both,
    Backend,
    User,
    /// Nothing: read the state, recovery applied.
    Peek,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Both => "both",
            Mode::Backend => "backend",
            Mode::User => "user",
            Mode::Peek => "peek",
        }
    }
}

/// One check: its buckets, and until when its caller may wait for a slot.
pub(super) struct Check {
    pub mode: Mode,
    pub user: Option<String>,
    pub deadline: Instant,
    /// The generation of the caller's earlier reservation, or -1.
    pub expected_generation: i64,
}

/// What the script decided for one check (its `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The wait exceeds the caller's budget; nothing was taken.
    Refused,
    /// A slot is reserved: call after `wait`.
    Reserved,
    /// The earlier reservation stands (no 429 since): call now.
    Confirmed,
    /// A user token is reserved: wait, then ask the backend.
    UserReserved,
    /// `peek`: nothing was taken.
    Peeked,
}

/// The script's answer to one check.
pub(super) struct Answer {
    pub verdict: Verdict,
    pub wait: Duration,
    pub tokens: f64,
    pub rate: f64,
    pub generation: i64,
    /// The effective rate moved (recovery); worth a log line.
    pub rate_changed: bool,
    pub cooldown: Duration,
}

type Reply = (i64, u64, f64, f64, i64, i64, u64);

impl Answer {
    fn parse(
        (status, wait_us, tokens, rate, generation, rate_changed, cooldown_us): Reply,
    ) -> Result<Self, redis::RedisError> {
        let verdict = match status {
            0 => Verdict::Refused,
            1 => Verdict::Reserved,
            2 => Verdict::Confirmed,
            3 => Verdict::UserReserved,
            4 => Verdict::Peeked,
            other => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "limiter script",
                    format!("unknown status {other}"),
                )));
            }
        };
        Ok(Self {
            verdict,
            wait: Duration::from_micros(wait_us),
            tokens,
            rate,
            generation,
            rate_changed: rate_changed == 1,
            cooldown: Duration::from_micros(cooldown_us),
        })
    }
}

/// The batching desk of one backend's checks, started by the first.
pub(super) struct Reservations {
    call: Arc<Call>,
    desk: OnceLock<mpsc::UnboundedSender<Waiting>>,
}

/// What every call of the script sends besides its checks.
struct Call {
    redis: RedisConnection,
    script: Script,
    /// The backend's state key; user buckets and the operator's rate hang off it.
    key: String,
    config: LimitsConfig,
    /// Shown in Redis beside the state.
    name: String,
    ttl_ms: u64,
}

struct Waiting {
    check: Check,
    answer: oneshot::Sender<Result<Answer, redis::RedisError>>,
}

impl Reservations {
    pub fn new(
        redis: RedisConnection,
        key: String,
        config: LimitsConfig,
        name: String,
        ttl_ms: u64,
    ) -> Self {
        let call = Call {
            redis,
            script: Script::new(include_str!("acquire.lua")),
            key,
            config,
            name,
            ttl_ms,
        };
        Self {
            call: Arc::new(call),
            desk: OnceLock::new(),
        }
    }

    /// Asks the script about `check`, in the next call.
    pub async fn check(&self, check: Check) -> Result<Answer, redis::RedisError> {
        let desk = self.desk.get_or_init(|| {
            let (desk, waiting) = mpsc::unbounded_channel();
            tokio::spawn(send_batches(self.call.clone(), waiting));
            desk
        });
        let (answer, answered) = oneshot::channel();
        if let Err(mpsc::error::SendError(waiting)) = desk.send(Waiting { check, answer }) {
            // The task ended (the runtime is stopping): asked alone.
            let mut answers = self.call.run(&[waiting.check]).await?;
            return answers.pop().ok_or_else(stopping);
        }
        answered.await.unwrap_or_else(|_| Err(stopping()))
    }
}

/// One call at a time, each with the checks that arrived while the one
/// before was in flight.
async fn send_batches(call: Arc<Call>, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (checks, answers): (Vec<Check>, Vec<_>) = batch
            .drain(..)
            .map(|waiting| (waiting.check, waiting.answer))
            .unzip();
        match call.run(&checks).await {
            // One answer per check, in order (`run` checks).
            Ok(results) => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(Ok(result));
                }
            }
            Err(error) => {
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }
}

impl Call {
    async fn run(&self, checks: &[Check]) -> Result<Vec<Answer>, redis::RedisError> {
        let config = &self.config;
        let (user_rate, user_capacity) = config
            .per_user
            .as_ref()
            .map_or((1.0, 1.0), |limit| (limit.rate_per_sec(), limit.calls));
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&self.key)
            .key(format!("{}:set", self.key))
            .arg(config.rate_per_sec)
            .arg(config.capacity)
            .arg(config.recovery_quiet_ms.saturating_mul(1000))
            .arg(config.recovery_interval_ms.saturating_mul(1000))
            .arg(config.recovery_step)
            .arg(user_rate)
            .arg(user_capacity)
            .arg(self.ttl_ms)
            .arg(&self.name);
        // The budgets are measured as the call leaves: time spent waiting
        // for it is not the caller's to spend twice.
        let now = Instant::now();
        for check in checks {
            let budget = check.deadline.saturating_duration_since(now);
            invocation
                .key(format!(
                    "{}:user:{}",
                    self.key,
                    check.user.as_deref().unwrap_or("")
                ))
                .arg(check.mode.as_str())
                .arg(u64::try_from(budget.as_micros()).unwrap_or(u64::MAX))
                .arg(check.expected_generation);
        }
        let replies: Vec<Reply> = invocation.invoke_async(&mut self.redis.clone()).await?;
        if replies.len() != checks.len() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "limiter script",
                format!("{} answers to {} checks", replies.len(), checks.len()),
            )));
        }
        replies.into_iter().map(Answer::parse).collect()
    }
}

fn stopping() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "the instance is stopping"))
}
