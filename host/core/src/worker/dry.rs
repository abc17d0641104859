//! Which of an instance's queues ran dry. A claim that found a queue empty
//! marks it; the queue's next work announcement (its wake channel: a
//! submission, a promoted retry, a recovered or replayed job), the idle
//! poll's interval, or the earliest retry coming due clears the mark. While
//! a queue is marked, a worker passing by it on its turns
//! (`QueueTurns`) is told at once that it is idle, instead of paying Redis
//! an empty claim: on an instance busy with one queue, most claims of its
//! other queues found nothing.
//!
//! A mark is only as fresh as the announcements its claim had seen before
//! it was sent: one that arrived meanwhile makes it stale at once, so a job
//! queued while an empty claim was on its way is not skipped. Pub/Sub is
//! at-most-once, so a mark lasts at most the idle poll, as an idle worker
//! waits at most that long before it asks again.
//!
//! Owns the marks only: when to claim is the worker's, what a claim does the
//! queue's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::queue::now_ms;

/// The marks of an instance's queues.
pub struct DryQueues {
    queues: HashMap<String, Marks>,
    /// How long a mark holds without an announcement: the idle poll.
    lasts: Duration,
}

#[derive(Default)]
struct Marks {
    /// Work announcements seen for the queue, counted.
    announced: AtomicU64,
    dry: Mutex<Option<Dry>>,
}

struct Dry {
    /// The announcements seen when the claim that found nothing was sent.
    announced: u64,
    until: Instant,
    /// When the queue's earliest retry is due (ms since the epoch).
    next_retry_ms: Option<u64>,
}

/// What a claim that may find nothing needs to mark its queue afterwards.
#[derive(Clone, Copy)]
pub struct Seen(u64);

impl DryQueues {
    pub fn new(queues: impl IntoIterator<Item = String>, lasts: Duration) -> Self {
        Self {
            queues: queues
                .into_iter()
                .map(|queue| (queue, Marks::default()))
                .collect(),
            lasts,
        }
    }

    /// Work was announced for `queue`: its mark no longer holds.
    pub fn announced(&self, queue: &str) {
        if let Some(marks) = self.queues.get(queue) {
            marks.announced.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Announcements may have been missed (the subscription was lost): no
    /// mark holds.
    pub fn announced_everywhere(&self) {
        for marks in self.queues.values() {
            marks.announced.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// To be taken before a claim of `queue` is sent.
    pub fn seen(&self, queue: &str) -> Seen {
        Seen(
            self.queues
                .get(queue)
                .map_or(0, |marks| marks.announced.load(Ordering::SeqCst)),
        )
    }

    /// A claim sent after `seen` found `queue` empty.
    pub fn ran_dry(&self, queue: &str, seen: Seen, next_retry_ms: Option<u64>) {
        if let Some(marks) = self.queues.get(queue) {
            *lock(&marks.dry) = Some(Dry {
                announced: seen.0,
                until: Instant::now() + self.lasts,
                next_retry_ms,
            });
        }
    }

    /// A claim of `queue` found work.
    pub fn had_work(&self, queue: &str) {
        if let Some(marks) = self.queues.get(queue) {
            *lock(&marks.dry) = None;
        }
    }

    /// `Some(when the earliest retry is due)` while `queue`'s mark holds.
    pub fn is_dry(&self, queue: &str) -> Option<Option<u64>> {
        let marks = self.queues.get(queue)?;
        let dry = lock(&marks.dry);
        let dry = dry.as_ref()?;
        let holds = dry.announced == marks.announced.load(Ordering::SeqCst)
            && Instant::now() < dry.until
            && dry.next_retry_ms.is_none_or(|due| now_ms() < due);
        holds.then_some(dry.next_retry_ms)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues() -> DryQueues {
        DryQueues::new(["a".to_owned(), "b".to_owned()], Duration::from_secs(60))
    }

    #[test]
    fn a_queue_found_empty_is_dry_until_work_is_announced_for_it() {
        let dry = queues();
        assert_eq!(dry.is_dry("a"), None, "unknown until claimed");
        let seen = dry.seen("a");
        dry.ran_dry("a", seen, None);
        assert_eq!(dry.is_dry("a"), Some(None));
        dry.announced("b");
        assert_eq!(dry.is_dry("a"), Some(None), "b's work is not a's");
        dry.announced("a");
        assert_eq!(dry.is_dry("a"), None);
    }

    #[test]
    fn an_announcement_made_while_the_claim_ran_is_not_missed() {
        let dry = queues();
        let seen = dry.seen("a");
        dry.announced("a");
        dry.ran_dry("a", seen, None);
        assert_eq!(dry.is_dry("a"), None);
    }

    #[test]
    fn a_mark_ends_with_its_time_a_due_retry_or_a_lost_subscription() {
        let dry = DryQueues::new(["a".to_owned()], Duration::ZERO);
        dry.ran_dry("a", dry.seen("a"), None);
        assert_eq!(dry.is_dry("a"), None, "the idle poll passed");

        let dry = queues();
        let due = now_ms() + 60_000;
        dry.ran_dry("a", dry.seen("a"), Some(due));
        assert_eq!(dry.is_dry("a"), Some(Some(due)), "a retry a minute away");
        dry.ran_dry("a", dry.seen("a"), Some(now_ms().saturating_sub(1)));
        assert_eq!(dry.is_dry("a"), None, "a retry is due");

        dry.ran_dry("a", dry.seen("a"), None);
        dry.announced_everywhere();
        assert_eq!(dry.is_dry("a"), None);

        dry.ran_dry("a", dry.seen("a"), None);
        dry.had_work("a");
        assert_eq!(dry.is_dry("a"), None);
    }
}
