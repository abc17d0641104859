//! Keeps this instance on the cluster's active handler versions: a Pub/Sub
//! notification triggers a check at once, a periodic check heals a missed one,
//! and after each switch the instance records in Redis what it now runs (the
//! confirmation deploy tools wait for).
//!
//! Owns the switch itself: load every newly active version first, then swap
//! them all in one step, then confirm. It does not validate (deploy did).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Handlers;
use super::store::InstanceReport;
use crate::queue::now_ms;

/// A held pin is refreshed this often (it is held for days, see
/// `store::PIN_HOLD_MS`, so that an instance that is down keeps its pins).
const PIN_REFRESH: Duration = Duration::from_secs(3600);

/// What this instance last applied, re-reported on every check as a heartbeat.
#[derive(Default)]
pub struct SyncState {
    lock: tokio::sync::Mutex<Applied>,
    failing: AtomicBool,
    /// When this instance last held its queues' pins.
    pins_held: std::sync::Mutex<Option<std::time::Instant>>,
}

#[derive(Default, Clone)]
struct Applied {
    generation: u64,
    switched_at: u64,
    handlers: BTreeMap<String, String>,
    reported: bool,
}

impl Handlers {
    /// Applies the active versions recorded in Redis, if they changed.
    pub async fn sync(&self) -> Result<()> {
        let mut applied = self.sync.lock.lock().await;
        let (remote, generation) = self.store.active_all().await?;
        let local = self.registry.versions();
        let pending: Vec<(&String, &String)> = remote
            .iter()
            .filter(|(name, version)| {
                local.get(*name) != Some(*version) && !self.is_broken(name, version)
            })
            .collect();
        if applied.reported && generation == self.registry.generation() && pending.is_empty() {
            return Ok(());
        }
        let mut next = local.clone();
        for (name, version) in pending {
            match self.load_version(name, version).await {
                Ok(_) => {
                    next.insert(name.clone(), version.clone());
                }
                // Redis away: nothing is wrong with the version; the next check retries.
                Err(error) if error.downcast_ref::<redis::RedisError>().is_some() => {
                    return Err(error);
                }
                Err(error) => {
                    if self.mark_broken(name, version) {
                        tracing::error!(handler = %name, %version, error = %format!("{error:#}"), "cannot load the active version; this instance keeps running its current one");
                    }
                }
            }
        }
        // Stamped inside the switch: jobs compare their recorded start with it.
        let switched_at = self.registry.switch(next.clone(), generation);
        for (name, version) in &next {
            if local.get(name) != Some(version) {
                let from = local.get(name).map(String::as_str).unwrap_or("none");
                tracing::info!(handler = %name, from, to = %version, generation, instance = %self.instance, "switched handler version");
            }
        }
        *applied = Applied {
            generation,
            switched_at,
            handlers: next.into_iter().collect(),
            reported: false,
        };
        self.report(&mut applied).await?;
        Ok(())
    }

    async fn report(&self, applied: &mut Applied) -> Result<()> {
        let report = InstanceReport {
            instance: self.instance.clone(),
            last_seen: now_ms(),
            generation: applied.generation,
            switched_at: applied.switched_at,
            handlers: applied.handlers.clone(),
        };
        self.store.confirm(&report).await?;
        applied.reported = true;
        Ok(())
    }

    /// One periodic check: sync, then report (the heartbeat that keeps this
    /// instance listed as live).
    async fn check(&self) -> Result<()> {
        self.sync().await?;
        self.refresh_pins().await?;
        let mut applied = self.sync.lock.lock().await;
        self.report(&mut applied).await
    }

    /// Holds this instance's pins again once [`PIN_REFRESH`] has passed.
    async fn refresh_pins(&self) -> Result<()> {
        let due = self
            .sync
            .pins_held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= PIN_REFRESH);
        if due {
            self.store
                .hold_pins(&self.registry.pins(), now_ms())
                .await?;
            *self
                .sync
                .pins_held
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Runs until `shutdown`: checks on every notification and every `interval`.
    pub async fn run_sync(
        self: Arc<Self>,
        pubsub: crate::connection::PubSubNodes,
        shutdown: CancellationToken,
    ) {
        let nudge = Arc::new(Notify::new());
        let channel = self.store.changed_channel();
        let listener = listen(pubsub, channel, nudge.clone(), shutdown.clone());
        let interval = self.settings.check_interval;
        let checker = async {
            loop {
                tokio::select! {
                    _ = nudge.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.cancelled() => return,
                }
                match self.check().await {
                    Ok(()) => {
                        if self.sync.failing.swap(false, Ordering::Relaxed) {
                            tracing::info!("handler registry reachable again");
                        }
                    }
                    Err(error) => {
                        if !self.sync.failing.swap(true, Ordering::Relaxed) {
                            tracing::warn!(error = %format!("{error:#}"), "cannot check the handler registry; will keep trying");
                        }
                    }
                }
            }
        };
        tokio::join!(listener, checker);
    }

    /// Takes this instance off the list deploy tools wait for (at shutdown).
    pub async fn leave(&self) {
        if let Err(error) = self.store.remove_instance(&self.instance).await {
            tracing::debug!(%error, "could not remove this instance from the registry's instance list");
        }
    }
}

/// Turns change notifications into nudges. Pub/Sub drops messages while
/// disconnected, so every (re)subscription also nudges: the check catches up.
async fn listen(
    pubsub: crate::connection::PubSubNodes,
    channel: String,
    nudge: Arc<Notify>,
    shutdown: CancellationToken,
) {
    use futures_util::StreamExt;
    loop {
        if let Ok(mut messages) = pubsub.subscribe(std::slice::from_ref(&channel)).await {
            nudge.notify_one();
            loop {
                tokio::select! {
                    message = messages.next() => match message {
                        Some(_) => nudge.notify_one(),
                        None => break,
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
            tracing::warn!("lost the handler-change subscription; reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
