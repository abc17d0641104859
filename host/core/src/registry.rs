//! Which handler versions this instance runs: the compiled versions it has
//! loaded, which one of each handler is active here, and the versions queues
//! pin. Workers resolve a job's handler here once, when they claim it, so a job
//! that started on one version finishes on it whatever switches meanwhile.
//!
//! Owns the in-process maps only. Which version is active cluster-wide lives in
//! Redis and is applied here by `handlers` (deploy, rollback, sync); this module
//! neither talks to Redis nor compiles anything beyond [`Registry::install`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};

use spool_runtime::{HandlerComponent, Runtime};

use crate::queue::now_ms;

/// A handler version resolved for a job, and when (ms since the epoch).
pub struct Resolved {
    /// `None`: the handler (or the pinned version) is not loaded here.
    pub handler: Option<HandlerComponent>,
    pub at_ms: u64,
}

type VersionKey = (String, String);

#[derive(Default)]
struct Local {
    /// (name, version) -> compiled component.
    loaded: HashMap<VersionKey, HandlerComponent>,
    /// name -> the version new jobs start on.
    active: HashMap<String, String>,
    /// Versions queues pin; never evicted.
    pinned: HashSet<VersionKey>,
    /// The cluster registry generation `active` reflects.
    generation: u64,
}

pub struct Registry {
    runtime: Arc<Runtime>,
    local: RwLock<Local>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            runtime,
            local: RwLock::new(Local::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Local> {
        self.local
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Local> {
        self.local
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Compiles, smoke-tests and activates a handler on this instance only,
    /// bypassing the cluster registry (for tools that run guests locally).
    pub async fn install(&self, name: &str, bytes: &[u8]) -> Result<HandlerComponent> {
        let handler = self.runtime.load(name, bytes)?;
        spool_runtime::validate::smoke_run(&self.runtime, &handler)
            .await
            .with_context(|| format!("validating handler `{name}`"))?;
        let mut local = self.write();
        local
            .active
            .insert(name.to_owned(), handler.version.clone());
        local
            .loaded
            .insert((name.to_owned(), handler.version.clone()), handler.clone());
        Ok(handler)
    }

    /// The active version of `name` on this instance.
    pub fn get(&self, name: &str) -> Option<HandlerComponent> {
        let local = self.read();
        let version = local.active.get(name)?;
        local
            .loaded
            .get(&(name.to_owned(), version.clone()))
            .cloned()
    }

    /// The version a job of a queue runs: the queue's pin, else the active one.
    pub fn resolve(&self, name: &str, pinned_version: Option<&str>) -> Option<HandlerComponent> {
        self.resolve_stamped(name, pinned_version).handler
    }

    /// [`Registry::resolve`], with the time it happened read under the same
    /// lock a switch takes: a resolution stamped before a switch's
    /// [`Registry::switch`] time saw the old version, one stamped after it the
    /// new (equal stamps say nothing). Workers record this time as the job's
    /// start, so the recorded start tells which version the job runs.
    pub fn resolve_stamped(&self, name: &str, pinned_version: Option<&str>) -> Resolved {
        let local = self.read();
        let version = match pinned_version {
            Some(version) => Some(version.to_owned()),
            None => local.active.get(name).cloned(),
        };
        Resolved {
            handler: version
                .and_then(|version| local.loaded.get(&(name.to_owned(), version)).cloned()),
            at_ms: now_ms(),
        }
    }

    /// A loaded version, active or not.
    pub fn loaded(&self, name: &str, version: &str) -> Option<HandlerComponent> {
        self.read()
            .loaded
            .get(&(name.to_owned(), version.to_owned()))
            .cloned()
    }

    /// Name -> active version of every handler.
    pub fn versions(&self) -> HashMap<String, String> {
        self.read().active.clone()
    }

    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Makes a compiled version available (not active).
    pub fn insert(&self, handler: HandlerComponent) {
        self.write()
            .loaded
            .insert((handler.name.clone(), handler.version.clone()), handler);
    }

    /// Keeps a loaded version for a queue that pins it.
    pub fn pin(&self, name: &str, version: &str) {
        self.write()
            .pinned
            .insert((name.to_owned(), version.to_owned()));
    }

    /// The (handler, version) pairs queues pin on this instance.
    pub fn pins(&self) -> Vec<(String, String)> {
        self.read().pinned.iter().cloned().collect()
    }

    /// Switches every handler to its version in `active` in one step. Versions
    /// not loaded are skipped (the caller loads first); versions neither active
    /// nor pinned are dropped here (jobs running on them keep their own handle).
    /// Returns the time of the switch (ms), read under the lock (see
    /// [`Registry::resolve_stamped`]).
    pub fn switch(&self, active: HashMap<String, String>, generation: u64) -> u64 {
        let mut local = self.write();
        let Local {
            loaded,
            active: current,
            pinned,
            generation: applied,
        } = &mut *local;
        for (name, version) in active {
            if loaded.contains_key(&(name.clone(), version.clone())) {
                current.insert(name, version);
            }
        }
        loaded.retain(|key, _| pinned.contains(key) || current.get(&key.0) == Some(&key.1));
        *applied = generation;
        now_ms()
    }
}
