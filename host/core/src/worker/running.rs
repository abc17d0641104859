//! The jobs this instance is running, by id, so that a cancel announced on the
//! cancel channel stops the right guest at once instead of at its next
//! heartbeat. Owns only that map; whoever hears a cancel calls [`RunningJobs::cancel`].

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct RunningJobs {
    jobs: Mutex<HashMap<String, CancellationToken>>,
}

/// A running job's entry; removed when dropped.
pub struct Watch<'a> {
    running: &'a RunningJobs,
    id: String,
    pub stop: CancellationToken,
}

impl RunningJobs {
    pub fn watch(&self, id: &str) -> Watch<'_> {
        let stop = CancellationToken::new();
        self.lock().insert(id.to_owned(), stop.clone());
        Watch {
            running: self,
            id: id.to_owned(),
            stop,
        }
    }

    /// Stops the job if it runs here; says whether it did.
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(stop) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
}
