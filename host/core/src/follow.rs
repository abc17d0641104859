//! Following a Redis stream to its end, for any transport: the one loop behind
//! a job's event stream and a session message's, over SSE and WebSocket alike.
//!
//! A [`Follower`] subscribes to the instance's [`Hub`] for what comes next,
//! and reads what came before it joined (from the client's resume id up to the
//! hub's position) itself, in pages on the shared connection, so history never
//! fills its live buffer. It says when the stream has been quiet (the
//! transport sends its heartbeat then), ends after the source's last entry or
//! when the source ended without one left in the stream (trimmed or expired),
//! and ends early with an [`Interruption`] naming the last id it delivered
//! when the hub let go of it (too slow, or Redis lost): the client resumes
//! from there. How entries are rendered is the transport's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::connection::RedisConnection;
use futures_util::future::BoxFuture;
use redis::RedisResult;
use redis::streams::{StreamId, StreamRangeReply};

use crate::hub::{Fate, Hub, Position, Refusal, Subscription};

/// Entries read per page of history.
const PAGE: usize = 200;
/// Entries before a resume point a source judging by history sees at most
/// (a job's stream keeps about 1,000).
const HISTORY_JUDGED: usize = 2_000;

use crate::metrics::Watching;

/// A stream a client follows: a job's events, a message's events.
pub trait Source: Send + Sync + 'static {
    type Entry: Send + 'static;

    /// The Redis stream holding the entries.
    fn key(&self) -> String;

    /// An entry as read from the stream.
    fn parse(entry: &StreamId) -> Self::Entry;

    /// Whether nothing follows this entry, given the entries before it
    /// (see [`Source::JUDGES_BY_HISTORY`]).
    fn is_last(&mut self, entry: &Self::Entry) -> bool;

    /// `is_last` also sees the entries before a resume point: a follower
    /// that resumes mid-stream reads them (a page) when it opens.
    const JUDGES_BY_HISTORY: bool = false;

    /// Asked when the stream was quiet: false when nothing more will come.
    fn is_open(&self) -> BoxFuture<'_, bool>;
}

/// What following produced next.
pub enum Step<E> {
    Entry(E),
    /// Nothing for a quiet interval; the source is still open.
    Quiet,
    /// The follower has ended before the stream did; the client should
    /// resume after `last_id`.
    Interrupted(Interruption),
}

#[derive(Clone, Debug)]
pub struct Interruption {
    pub cause: Cause,
    /// The id of the last entry delivered (the client's resume id if none).
    pub last_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Its buffer filled: the client read slower than the stream grew.
    SlowConsumer,
    /// The event store could not be read.
    StoreUnavailable,
}

impl Cause {
    pub fn code(self) -> &'static str {
        match self {
            Cause::SlowConsumer => "slow_consumer",
            Cause::StoreUnavailable => "store_unavailable",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Cause::SlowConsumer => {
                "events came faster than this client read them; resume from lastId"
            }
            Cause::StoreUnavailable => "event store unavailable; reconnect with Last-Event-ID",
        }
    }
}

pub struct Follower<S: Source> {
    source: S,
    subscription: Subscription,
    redis: RedisConnection,
    key: String,
    /// The last entry delivered (or the client's resume id).
    last: Position,
    /// History still to read before live entries: up to the hub's position
    /// at joining.
    catch_up_to: Option<Position>,
    /// The source ended: read what is left in the stream, then stop.
    closing: bool,
    buffered: VecDeque<Arc<StreamId>>,
    quiet: Duration,
    finished: bool,
    /// Counts this client in `spool_watchers` while it follows.
    _watching: Watching,
}

impl<S: Source> Follower<S> {
    /// Starts after `after` (`"0"`: from the beginning) as a watcher of
    /// `holder` (an API key id), within the hub's caps.
    pub async fn open(
        hub: &Hub,
        source: S,
        after: &str,
        quiet: Duration,
        holder: &str,
    ) -> Result<Self, Refusal> {
        let last = Position::parse(after).ok_or_else(|| Refusal::InvalidId(after.to_owned()))?;
        let key = source.key();
        let subscription = hub.subscribe(key.clone(), holder).await?;
        let catch_up_to = Position::parse(subscription.joined_at()).filter(|joined| *joined > last);
        let mut follower = Self {
            redis: subscription.connection(),
            source,
            subscription,
            key,
            last,
            catch_up_to,
            closing: false,
            buffered: VecDeque::new(),
            quiet,
            finished: false,
            _watching: Watching::start(),
        };
        if S::JUDGES_BY_HISTORY && last > Position(0, 0) {
            follower.finished = follower.judge_history().await;
        }
        Ok(follower)
    }

    /// Shows the source the entries up to the resume point; true when the
    /// last of them was the stream's last. Unreadable history judges nothing:
    /// the source is asked again when the stream goes quiet.
    async fn judge_history(&mut self) -> bool {
        let reply: RedisResult<StreamRangeReply> = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg(self.last.to_string())
            .arg("-")
            .arg("COUNT")
            .arg(HISTORY_JUDGED)
            .query_async(&mut self.redis)
            .await;
        let Ok(reply) = reply else {
            return false;
        };
        let mut last = false;
        for raw in reply.ids.iter().rev() {
            last = self.source.is_last(&S::parse(raw));
        }
        last
    }

    pub async fn next(&mut self) -> Option<Step<S::Entry>> {
        loop {
            if let Some(raw) = self.buffered.pop_front() {
                // Live entries a resumed client already has, or history the
                // hub also delivered, are skipped.
                match Position::parse(&raw.id) {
                    Some(position) if position > self.last => self.last = position,
                    _ => continue,
                }
                let entry = S::parse(&raw);
                self.finished = self.source.is_last(&entry);
                return Some(Step::Entry(entry));
            }
            if self.finished {
                return None;
            }
            if let Some(until) = self.catch_up_to {
                let page = match self.page(Some(until)).await {
                    Ok(page) => page,
                    Err(_) => return Some(self.interrupt(Cause::StoreUnavailable)),
                };
                // A short page reached `until` (or the rest was trimmed).
                if page.len() < PAGE {
                    self.catch_up_to = None;
                }
                self.buffered.extend(page.into_iter().map(Arc::new));
                continue;
            }
            if self.closing {
                match self.page(None).await {
                    Ok(page) if page.is_empty() => return None,
                    Ok(page) => self.buffered.extend(page.into_iter().map(Arc::new)),
                    Err(_) => return Some(self.interrupt(Cause::StoreUnavailable)),
                }
                continue;
            }
            tokio::select! {
                entry = self.subscription.recv() => match entry {
                    Some(entry) => self.buffered.push_back(entry),
                    None => {
                        let cause = match self.subscription.fate() {
                            Fate::Lagged => Cause::SlowConsumer,
                            Fate::Failed | Fate::Live => Cause::StoreUnavailable,
                        };
                        return Some(self.interrupt(cause));
                    }
                },
                _ = tokio::time::sleep(self.quiet) => {
                    if self.source.is_open().await {
                        return Some(Step::Quiet);
                    }
                    // Ended: whatever the hub has not handed over yet is in
                    // the stream.
                    self.closing = true;
                }
            }
        }
    }

    /// Entries after the last one delivered, up to `until` (inclusive).
    async fn page(&mut self, until: Option<Position>) -> RedisResult<Vec<StreamId>> {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(format!("({}", self.last))
            .arg(until.map_or_else(|| "+".to_owned(), |p| p.to_string()))
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut self.redis)
            .await?;
        Ok(reply.ids)
    }

    fn interrupt(&mut self, cause: Cause) -> Step<S::Entry> {
        self.finished = true;
        self.buffered.clear();
        Step::Interrupted(Interruption {
            cause,
            last_id: self.last.to_string(),
        })
    }

    /// The steps as a stream, ending with the follower.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Step<S::Entry>> + Send {
        futures_util::stream::unfold(self, |mut follower| async move {
            let step = follower.next().await?;
            Some((step, follower))
        })
    }
}
