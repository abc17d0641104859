//! One Pub/Sub connection per instance for every conversation its clients
//! are in: it subscribes to `chat:{id}` while the instance has a client in
//! that conversation, and hands each published frame to all of them through
//! one bounded broadcast per conversation.
//!
//! Pub/Sub is at-most-once and redis-rs does not reconnect a Pub/Sub
//! connection: this loop reconnects, resubscribes, and tells the clients to
//! catch up from the stream ([`Signal::Resync`]) after every subscription is
//! confirmed, so a frame published while nobody here listened is read from
//! the stream instead. Owns the connection and the memberships; never
//! writes to Redis.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};

use super::{ConversationId, Frame};

/// The pause before reconnecting after a failure; doubles per failure in a row.
const FIRST_RECONNECT: Duration = Duration::from_millis(200);
/// The longest pause between reconnections.
const MAX_RECONNECT: Duration = Duration::from_secs(5);

/// What a conversation's clients on this instance receive.
#[derive(Clone, Debug)]
pub enum Signal {
    Frame(Frame),
    /// Frames may have been missed here: read the stream from your last id.
    Resync,
}

/// The instance's Pub/Sub fan-out; cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

struct Inner {
    buffer: usize,
    members: Mutex<HashMap<ConversationId, Room>>,
    /// Conversations whose subscription may need to change.
    changed: mpsc::UnboundedSender<ConversationId>,
    changes: Mutex<Option<mpsc::UnboundedReceiver<ConversationId>>>,
}

struct Room {
    sender: broadcast::Sender<Signal>,
    clients: usize,
}

/// A client's place in a conversation; leaving drops it.
pub struct Membership {
    inner: Arc<Inner>,
    conversation: ConversationId,
    pub signals: broadcast::Receiver<Signal>,
}

impl Fanout {
    pub fn new(buffer: usize) -> Self {
        let (changed, changes) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                buffer,
                members: Mutex::default(),
                changed,
                changes: Mutex::new(Some(changes)),
            }),
        }
    }

    /// Joins `conversation`: its live frames arrive in the membership from
    /// now on (after a [`Signal::Resync`] once the subscription is confirmed).
    pub fn join(&self, conversation: &ConversationId) -> Membership {
        let signals = {
            let mut members = lock(&self.inner.members);
            let room = members.entry(conversation.clone()).or_insert_with(|| Room {
                sender: broadcast::channel(self.inner.buffer).0,
                clients: 0,
            });
            room.clients += 1;
            room.sender.subscribe()
        };
        let _ = self.inner.changed.send(conversation.clone());
        Membership {
            inner: self.inner.clone(),
            conversation: conversation.clone(),
            signals,
        }
    }

    /// Conversations with a client on this instance.
    pub fn conversations(&self) -> usize {
        lock(&self.inner.members).len()
    }

    /// Keeps the subscriptions until the task is dropped; reconnects by
    /// itself. Only the first call does anything.
    pub async fn run(self, pubsub: crate::connection::PubSubNodes) {
        let Some(mut changes) = lock(&self.inner.changes).take() else {
            return;
        };
        let mut pause = FIRST_RECONNECT;
        loop {
            let connected = tokio::time::Instant::now();
            match self.serve(&pubsub, &mut changes).await {
                Ok(()) => {
                    tracing::warn!(
                        ?pause,
                        "the conversations' Pub/Sub connection closed; reconnecting"
                    )
                }
                Err(error) => {
                    tracing::warn!(%error, ?pause, "conversations' Pub/Sub failed; reconnecting")
                }
            }
            // A connection that lived a while starts the backoff again.
            if connected.elapsed() > MAX_RECONNECT {
                pause = FIRST_RECONNECT;
            }
            // Jittered, so the instances of a fleet do not reconnect in step.
            tokio::time::sleep(pause.mul_f64(0.8 + 0.4 * fastrand::f64())).await;
            pause = (pause * 2).min(MAX_RECONNECT);
        }
    }

    /// One connection's life: subscribe to every joined conversation, then
    /// follow joins and leaves while dispatching messages.
    async fn serve(
        &self,
        pubsub: &crate::connection::PubSubNodes,
        changes: &mut mpsc::UnboundedReceiver<ConversationId>,
    ) -> redis::RedisResult<()> {
        let (mut sink, mut stream) = pubsub.connect().await?.split();
        let mut subscribed: HashSet<ConversationId> = HashSet::new();
        let joined: Vec<ConversationId> = lock(&self.inner.members).keys().cloned().collect();
        for conversation in joined {
            self.reconcile(&mut sink, &mut subscribed, conversation)
                .await?;
        }
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { return Ok(()) };
                    let channel = message.get_channel_name();
                    let Some(conversation) = channel.strip_prefix("chat:").and_then(ConversationId::parse) else {
                        continue;
                    };
                    let payload: String = message.get_payload().unwrap_or_default();
                    if let Some(frame) = Frame::published(&payload) {
                        self.send(&conversation, Signal::Frame(frame));
                    }
                }
                Some(conversation) = changes.recv() => {
                    self.reconcile(&mut sink, &mut subscribed, conversation).await?;
                }
            }
        }
    }

    /// Subscribes to a conversation with clients here, unsubscribes from one
    /// without; a new subscription is followed by a resync of its clients.
    async fn reconcile(
        &self,
        sink: &mut redis::aio::PubSubSink,
        subscribed: &mut HashSet<ConversationId>,
        conversation: ConversationId,
    ) -> redis::RedisResult<()> {
        let wanted = lock(&self.inner.members).contains_key(&conversation);
        if wanted && !subscribed.contains(&conversation) {
            sink.subscribe(conversation.channel()).await?;
            subscribed.insert(conversation.clone());
            self.send(&conversation, Signal::Resync);
        } else if !wanted && subscribed.remove(&conversation) {
            sink.unsubscribe(conversation.channel()).await?;
        }
        Ok(())
    }

    fn send(&self, conversation: &ConversationId, signal: Signal) {
        if let Some(room) = lock(&self.inner.members).get(conversation) {
            // No receiver left is fine: the room is being left.
            let _ = room.sender.send(signal);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut members = lock(&self.inner.members);
        if let Some(room) = members.get_mut(&self.conversation) {
            room.clients = room.clients.saturating_sub(1);
            if room.clients == 0 {
                members.remove(&self.conversation);
                let _ = self.inner.changed.send(self.conversation.clone());
            }
        }
    }
}

/// The maps guarded here are never left half-changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
