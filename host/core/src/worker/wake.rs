//! Waking an instance's idle workers when work is queued: for each job this
//! instance's intake queued, and for each announcement heard on Pub/Sub (any
//! instance's submission call, a promoted retry, a recovered or replayed
//! job). Owns the order that makes a wake-up count: the queue's dry mark is
//! cleared first, or the woken worker would be told the queue is still dry.
//! It does not claim (the worker does) nor listen to Pub/Sub (the service
//! does).

use std::sync::Arc;

use tokio::sync::Notify;

use super::dry::DryQueues;
use crate::intake::Announce;

pub struct Wake {
    dry: Arc<DryQueues>,
    /// What idle workers wait on; the workers' own.
    idle: Arc<Notify>,
    /// The instance's workers: more wake-ups than that find no one.
    workers: usize,
}

impl Wake {
    pub fn new(dry: Arc<DryQueues>, idle: Arc<Notify>, workers: usize) -> Self {
        Self { dry, idle, workers }
    }

    /// Work for `queue` was announced, in an unknown amount: one idle worker
    /// wakes, and each that finds work wakes the next.
    pub fn announced(&self, queue: &str) {
        self.dry.announced(queue);
        self.idle.notify_one();
    }

    /// Announcements may have been missed (the subscription was lost):
    /// every queue may have work, and every idle worker looks.
    pub fn announced_everywhere(&self) {
        self.dry.announced_everywhere();
        self.idle.notify_waiters();
    }
}

impl Announce for Wake {
    /// One idle worker wakes for each job, up to all of them.
    fn queued(&self, queue: &str, jobs: usize) {
        self.dry.announced(queue);
        for _ in 0..jobs.min(self.workers) {
            self.idle.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `waiting` idle workers, as `Workers::run` waits: registered before
    /// the wake-up comes.
    async fn idle_workers(idle: &Arc<Notify>, waiting: usize) -> tokio::task::JoinSet<()> {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..waiting {
            let idle = idle.clone();
            let (registered, done) = tokio::sync::oneshot::channel();
            workers.spawn(async move {
                let notified = idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let _ = registered.send(());
                notified.await;
            });
            let _ = done.await;
        }
        workers
    }

    /// Exactly `expected` of `workers` wake: each is awaited (a slow machine
    /// only delays them), and then no other wakes within 50 ms.
    async fn assert_woken(workers: &mut tokio::task::JoinSet<()>, expected: usize, why: &str) {
        for n in 1..=expected {
            let joined = tokio::time::timeout(Duration::from_secs(10), workers.join_next()).await;
            assert!(
                matches!(joined, Ok(Some(Ok(())))),
                "{why}: only {} woke",
                n - 1
            );
        }
        let more = tokio::time::timeout(Duration::from_millis(50), workers.join_next()).await;
        assert!(
            !matches!(more, Ok(Some(_))),
            "{why}: more than {expected} woke"
        );
    }

    #[tokio::test]
    async fn queued_jobs_wake_one_idle_worker_each_and_clear_the_dry_mark() {
        let dry = Arc::new(DryQueues::new(["q".to_owned()], Duration::from_secs(60)));
        let idle = Arc::new(Notify::new());
        let wake = Wake::new(dry.clone(), idle.clone(), 8);
        dry.ran_dry("q", dry.seen("q"), None);

        let mut workers = idle_workers(&idle, 6).await;
        wake.queued("q", 3);
        assert_woken(&mut workers, 3, "one worker a job").await;
        assert_eq!(dry.is_dry("q"), None, "the woken find the queue open");

        wake.announced("q");
        assert_woken(&mut workers, 1, "an announcement wakes one").await;
        wake.announced_everywhere();
        assert_woken(&mut workers, 2, "a lost subscription wakes all").await;
    }

    #[tokio::test]
    async fn a_bulk_wakes_no_more_than_every_worker() {
        let dry = Arc::new(DryQueues::new(["q".to_owned()], Duration::from_secs(60)));
        let idle = Arc::new(Notify::new());
        let wake = Wake::new(dry, idle.clone(), 4);
        let mut workers = idle_workers(&idle, 6).await;
        wake.queued("q", 1000);
        assert_woken(&mut workers, 4, "a worker each, up to every worker").await;
    }
}
