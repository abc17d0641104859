//! Which handler components this instance can run: the built-in ones compiled into
//! the binary and any loaded from files, each compiled once and smoke-tested before
//! it serves. Owns the name -> compiled component map; does not run jobs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};

use crate::runtime::{HandlerComponent, Job, Runtime};

/// Handler components built from `guest/` and embedded by `build.rs`.
pub const BUILT_IN: &[(&str, &[u8])] = &[
    (
        "chat",
        include_bytes!(concat!(env!("OUT_DIR"), "/chat.wasm")),
    ),
    (
        "pipeline",
        include_bytes!(concat!(env!("OUT_DIR"), "/pipeline.wasm")),
    ),
];

pub struct Registry {
    runtime: Arc<Runtime>,
    handlers: RwLock<HashMap<String, HandlerComponent>>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            runtime,
            handlers: RwLock::new(HashMap::new()),
        }
    }

    /// Compiles, smoke-tests and installs a handler under `name`.
    pub async fn install(&self, name: &str, bytes: &[u8]) -> Result<HandlerComponent> {
        let handler = self.runtime.load(name, bytes)?;
        smoke_test(&self.runtime, &handler).await?;
        tracing::info!(handler = name, version = %handler.version, bytes = bytes.len(), "handler ready");
        let mut handlers = self
            .handlers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        handlers.insert(name.to_owned(), handler.clone());
        Ok(handler)
    }

    pub fn get(&self, name: &str) -> Option<HandlerComponent> {
        self.handlers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(name)
            .cloned()
    }

    /// Name -> version of every installed handler.
    pub fn versions(&self) -> HashMap<String, String> {
        let handlers = self
            .handlers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        handlers
            .iter()
            .map(|(name, h)| (name.clone(), h.version.clone()))
            .collect()
    }
}

/// Instantiating checks the export types, which linking alone does not; one call
/// proves the component runs. Refusing the dummy job is a fine answer.
async fn smoke_test(runtime: &Runtime, handler: &HandlerComponent) -> Result<()> {
    let job = Job {
        id: "smoke-test".into(),
        queue: "smoke-test".into(),
        user_id: String::new(),
        user_tier: String::new(),
        priority: 5,
        payload: "{}".into(),
        attempt: 0,
    };
    match runtime.admit(handler, &job).await {
        Ok(_) => Ok::<(), anyhow::Error>(()),
        Err(failure) => bail!(
            "handler `{}` failed its smoke test: {failure}",
            handler.name
        ),
    }
    .with_context(|| format!("validating handler `{}`", handler.name))
}
