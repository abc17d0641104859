//! Reuse of priority decisions (WIT interface `admission`): what a handler
//! version declares its `admit` reads, and the bounded table of the decisions
//! it made, keyed by the values of those inputs.
//!
//! Owns the declaration and the table of one version (a new version gets its
//! own, so a hot swap never sees an old version's decisions). It runs no
//! guest code (the runtime in `engine` does) and never reads a payload: a rule
//! that declares the payload or the job id is never reused.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::OnceCell;
use wasmtime::component::{Component, ComponentExportIndex};

use crate::{Job, PriorityDecision};

/// Decisions kept per handler version. Past it the table starts afresh: a
/// decision not kept only costs an instance again.
pub const MAX_KEPT_DECISIONS: usize = 4096;

/// The optional export that declares a rule's inputs, and its function.
const INTERFACE: &str = "spool:handler/admission@0.2.0";
const FUNCTION: &str = "admit-reads";

/// What `admit` returned for a submission: a decision or a refusal's reason.
pub type Decision = Result<PriorityDecision, String>;

/// The job fields a reusable rule declared it reads. (`id` and `payload` make
/// a rule not reusable, so they have no field here.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmitReads {
    pub queue: bool,
    pub user_id: bool,
    pub user_tier: bool,
    pub priority: bool,
}

impl AdmitReads {
    /// From the names of the flags the guest set (`admit-inputs`); `None`
    /// (call `admit` every time) when they name `id`, `payload`, or a flag
    /// this host does not know.
    pub fn from_flags<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut reads = Self::default();
        for name in names {
            match name {
                "queue" => reads.queue = true,
                "user-id" => reads.user_id = true,
                "user-tier" => reads.user_tier = true,
                "priority" => reads.priority = true,
                _ => return None,
            }
        }
        Some(reads)
    }

    fn key(self, job: &Job) -> DecisionKey {
        DecisionKey {
            queue: self.queue.then(|| job.queue.clone()),
            user_id: self.user_id.then(|| job.user_id.clone()),
            user_tier: self.user_tier.then(|| job.user_tier.clone()),
            priority: self.priority.then_some(job.priority),
        }
    }
}

/// The declared inputs' values: jobs with equal keys get equal decisions.
#[derive(Debug, Hash, PartialEq, Eq)]
pub(crate) struct DecisionKey {
    queue: Option<String>,
    user_id: Option<String>,
    user_tier: Option<String>,
    priority: Option<u8>,
}

/// One handler version's declaration and kept decisions, shared by the
/// clones of its `HandlerComponent`.
pub(crate) struct Admission {
    /// `admit-reads`, when the component exports it.
    export: Option<ComponentExportIndex>,
    /// Asked once per version; `None` inside: every submission calls `admit`.
    reads: OnceCell<Option<AdmitReads>>,
    decisions: Mutex<HashMap<DecisionKey, Decision>>,
}

impl Admission {
    pub(crate) fn of(component: &Component) -> Self {
        let export = component
            .get_export_index(None, INTERFACE)
            .and_then(|interface| component.get_export_index(Some(&interface), FUNCTION));
        Self {
            export,
            reads: OnceCell::new(),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn export(&self) -> Option<ComponentExportIndex> {
        self.export
    }

    pub(crate) fn reads(&self) -> &OnceCell<Option<AdmitReads>> {
        &self.reads
    }

    pub(crate) fn key(reads: AdmitReads, job: &Job) -> DecisionKey {
        reads.key(job)
    }

    pub(crate) fn kept(&self, key: &DecisionKey) -> Option<Decision> {
        self.table().get(key).cloned()
    }

    pub(crate) fn keep(&self, key: DecisionKey, decision: Decision) {
        let mut table = self.table();
        if table.len() >= MAX_KEPT_DECISIONS {
            table.clear();
        }
        table.insert(key, decision);
    }

    #[cfg(test)]
    pub(crate) fn kept_count(&self) -> usize {
        self.table().len()
    }

    /// The table holds plain data, consistent after any panic: keep using it.
    fn table(&self) -> MutexGuard<'_, HashMap<DecisionKey, Decision>> {
        self.decisions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PriorityClass;

    fn job(queue: &str, tier: &str, priority: u8, payload: &str) -> Job {
        Job {
            id: format!("job-{priority}"),
            queue: queue.into(),
            user_id: "u".into(),
            user_tier: tier.into(),
            priority,
            payload: payload.into(),
            attempt: 0,
        }
    }

    #[test]
    fn id_payload_and_unknown_flags_turn_reuse_off() {
        assert_eq!(AdmitReads::from_flags(["priority", "payload"]), None);
        assert_eq!(AdmitReads::from_flags(["id"]), None);
        assert_eq!(AdmitReads::from_flags(["priority", "moon-phase"]), None);
        assert_eq!(
            AdmitReads::from_flags(["priority", "user-tier"]),
            Some(AdmitReads {
                priority: true,
                user_tier: true,
                ..AdmitReads::default()
            })
        );
        assert_eq!(AdmitReads::from_flags([]), Some(AdmitReads::default()));
    }

    #[test]
    fn keys_ignore_what_was_not_declared() {
        let reads = AdmitReads::from_flags(["priority"]).unwrap();
        assert_eq!(
            reads.key(&job("a", "vip", 5, "{}")),
            reads.key(&job("b", "new", 5, "[1]"))
        );
        assert_ne!(
            reads.key(&job("a", "vip", 5, "{}")),
            reads.key(&job("a", "vip", 6, "{}"))
        );
        let by_queue = AdmitReads::from_flags(["queue"]).unwrap();
        assert_ne!(
            by_queue.key(&job("a", "", 5, "{}")),
            by_queue.key(&job("b", "", 5, "{}"))
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let admission = Admission {
            export: None,
            reads: OnceCell::new(),
            decisions: Mutex::new(HashMap::new()),
        };
        let reads = AdmitReads::from_flags(["user-id"]).unwrap();
        let decision = Ok(PriorityDecision {
            class: PriorityClass::Normal,
            score: 5,
        });
        for n in 0..MAX_KEPT_DECISIONS + 10 {
            let mut job = job("q", "", 5, "{}");
            job.user_id = format!("user-{n}");
            admission.keep(reads.key(&job), decision.clone());
            assert!(admission.kept_count() <= MAX_KEPT_DECISIONS);
        }
        let mut last = job("q", "", 5, "{}");
        last.user_id = format!("user-{}", MAX_KEPT_DECISIONS + 9);
        let kept = admission.kept(&reads.key(&last));
        assert!(matches!(kept, Some(Ok(d)) if d.score == 5), "{kept:?}");
    }
}
