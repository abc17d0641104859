//! Following a Redis stream to its end, for any transport: the one loop behind
//! a job's event stream and a session message's, over SSE and WebSocket alike.
//!
//! A [`Follower`] reads in batches after the last id it handed out, blocks up
//! to its quiet interval, says when the stream has been quiet (the transport
//! sends its heartbeat then) and ends after the source's last entry, or when
//! the source ended without one left in the stream (trimmed or expired). It
//! owns one blocking connection; how entries are rendered is the transport's.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

use crate::metrics::Watching;

/// A stream a client follows: a job's events, a message's events.
pub trait Source: Send + Sync + 'static {
    type Entry: Send + 'static;

    /// The entries after `after`, waiting up to `block` for the first.
    fn read<'a>(
        &'a self,
        redis: &'a mut MultiplexedConnection,
        after: &'a str,
        block: Duration,
    ) -> BoxFuture<'a, RedisResult<Vec<Self::Entry>>>;

    /// The entry's stream id, which a client passes back to resume after it.
    fn entry_id(entry: &Self::Entry) -> &str;

    /// Whether nothing follows this entry.
    fn is_last(entry: &Self::Entry) -> bool;

    /// Asked when the stream was quiet: false when nothing more will come.
    fn is_open(&self) -> BoxFuture<'_, bool>;
}

/// What following produced next.
pub enum Step<E> {
    Entry(E),
    /// Nothing for a quiet interval; the source is still open.
    Quiet,
    /// The store failed; the follower has ended, and the client should resume
    /// from the last id it saw.
    Failed(RedisError),
}

pub struct Follower<S: Source> {
    source: S,
    redis: MultiplexedConnection,
    after: String,
    quiet: Duration,
    buffered: VecDeque<S::Entry>,
    finished: bool,
    /// Counts this client in `spool_watchers` while it follows.
    _watching: Watching,
}

impl<S: Source> Follower<S> {
    /// Starts after `after` (`"0"`: from the beginning) on a connection of its
    /// own, whose reply timeout outlasts the blocking reads.
    pub async fn open(
        client: &redis::Client,
        source: S,
        after: String,
        quiet: Duration,
    ) -> RedisResult<Self> {
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(quiet + Duration::from_secs(5)));
        let redis = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Self {
            source,
            redis,
            after,
            quiet,
            buffered: VecDeque::new(),
            finished: false,
            _watching: Watching::start(),
        })
    }

    pub async fn next(&mut self) -> Option<Step<S::Entry>> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                self.finished = S::is_last(&entry);
                return Some(Step::Entry(entry));
            }
            if self.finished {
                return None;
            }
            match self
                .source
                .read(&mut self.redis, &self.after, self.quiet)
                .await
            {
                Ok(batch) if !batch.is_empty() => {
                    if let Some(last) = batch.last() {
                        self.after = S::entry_id(last).to_owned();
                    }
                    self.buffered.extend(batch);
                }
                Ok(_) if self.source.is_open().await => return Some(Step::Quiet),
                Ok(_) => return None,
                Err(error) => {
                    self.finished = true;
                    return Some(Step::Failed(error));
                }
            }
        }
    }

    /// The steps as a stream, ending with the follower.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Step<S::Entry>> + Send {
        futures_util::stream::unfold(self, |mut follower| async move {
            let step = follower.next().await?;
            Some((step, follower))
        })
    }
}
