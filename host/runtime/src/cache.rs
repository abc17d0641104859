//! The compiled-component cache: Cranelift output kept on local disk, keyed by
//! the component's SHA-256 and the engine fingerprint, so a restart or a second
//! instance on the same machine loads a handler version in milliseconds instead
//! of compiling it again.
//!
//! Owns the cache directory and its hit/miss counters. It does not decide which
//! versions to load (the handler service does) and never stores artifacts in
//! Redis: a precompiled artifact is native code, loaded without verification,
//! so only a directory this process owns (mode 0700) is trusted with them.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Deserialized from the cache directory.
    Cache,
    /// Compiled now (and written to the cache for next time).
    Compiled,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Compiled => "compiled",
        }
    }
}

pub struct CompiledCache {
    /// `None` when the directory could not be created or is not private:
    /// every load compiles.
    dir: Option<PathBuf>,
    fingerprint: String,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CompiledCache {
    pub fn new(dir: PathBuf, fingerprint: String) -> Self {
        let dir = match prepare_dir(&dir) {
            Ok(()) => Some(dir),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), error = %format!("{error:#}"), "compiled-component cache disabled; every load compiles");
                None
            }
        };
        Self {
            dir,
            fingerprint,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Where the artifact of `sha256` for this engine is (or would be).
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{sha256}-{}.cwasm", self.fingerprint)))
    }

    /// Deletes the artifact of `sha256`, if there is one: the upload was
    /// rejected or its version pruned, so nothing will load it again, and
    /// leaving it would grow the cache forever. Blocking (one unlink).
    pub fn remove(&self, sha256: &str) {
        let Some(path) = self.path(sha256) else {
            return;
        };
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed a compiled artifact"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "could not remove a compiled artifact")
            }
        }
    }

    /// The component for `bytes` (whose SHA-256 is `sha256`): from the cache if
    /// an artifact for this engine is there, else compiled and cached. Blocking
    /// (compiling takes 50-500 ms of CPU): call it from `spawn_blocking`.
    pub fn load(&self, engine: &Engine, sha256: &str, bytes: &[u8]) -> Result<(Component, Source)> {
        let path = self.path(sha256);
        if let Some(path) = path.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file is in a directory only this user can write (checked
            // at start-up) and was written by `store` below from the output of
            // `Component::serialize` for these exact bytes; wasmtime also rejects
            // artifacts of another engine configuration.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(component) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((component, Source::Cache));
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "unusable compiled artifact; compiling again")
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let component =
            Component::new(engine, bytes).map_err(|e| anyhow::anyhow!("{}", chain(&e)))?;
        tracing::info!(
            sha256 = &sha256[..12],
            ms = started.elapsed().as_millis() as u64,
            "compiled component (cache miss)"
        );
        if let Some(path) = path
            && let Err(error) = store(&component, &path)
        {
            tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "could not write the compiled-component cache");
        }
        Ok((component, Source::Compiled))
    }
}

fn chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Creates the directory (mode 0700) and refuses one others may write to.
fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o022 != 0 {
        anyhow::bail!(
            "{} is writable by other users (mode {:o}); its artifacts would be native code anyone could plant",
            dir.display(),
            mode & 0o777
        );
    }
    Ok(())
}

/// Write-then-rename, so a concurrent reader (another instance) never sees a
/// half-written artifact.
fn store(component: &Component, path: &Path) -> Result<()> {
    let artifact = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("{}", chain(&e)))?;
    let temporary = path.with_extension(format!(
        "tmp-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&temporary, artifact)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// `$XDG_CACHE_HOME/spool/compiled`, else `~/.cache/spool/compiled`, else a
/// directory under the system temp dir.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        });
    match base {
        Some(base) => base.join("spool").join("compiled"),
        None => std::env::temp_dir().join("spool-compiled"),
    }
}
