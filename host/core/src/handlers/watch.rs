//! The dev loop: `spool serve --watch NAME=PATH` re-deploys a guest whenever its
//! file changes, through the same validation as `spool deploy` (a broken build
//! is rejected and logged; the active version keeps serving).
//!
//! Owns the file watching (inotify via `notify`, on the file's directory so
//! that editors and cargo replacing the file are seen) and the debounce. The
//! deployment itself is [`Handlers::deploy`]'s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::{Deployed, Handlers, sha256_hex};

/// Writes come in bursts (a compiler writes, then renames): wait this long
/// after the last event before reading the file.
const SETTLE: Duration = Duration::from_millis(200);

/// Reads `path` and deploys it as `name`.
pub async fn deploy_file(handlers: &Handlers, name: &str, path: &Path) -> Result<Deployed> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let by = format!("watch:{}", path.display());
    let deployed = handlers
        .deploy(name, Bytes::from(bytes), &by, "watch")
        .await?;
    Ok(deployed)
}

/// Parses `NAME=PATH`, or `PATH` alone (the name is the file stem).
pub fn parse_spec(spec: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = match spec.split_once('=') {
        Some((name, path)) => (name.to_owned(), PathBuf::from(path)),
        None => {
            let path = PathBuf::from(spec);
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .replace('_', "-");
            (stem, path)
        }
    };
    if !super::valid_handler_name(&name) {
        return Err(format!(
            "`{spec}`: handler name `{name}` must be 1-64 characters of a-z, 0-9, '-' or '_' (write NAME=PATH)"
        ));
    }
    if path.file_name().is_none() {
        return Err(format!("`{spec}`: {} is not a file path", path.display()));
    }
    Ok((name, path))
}

/// Watches every entry until `shutdown`.
pub async fn run(
    handlers: Arc<Handlers>,
    entries: BTreeMap<String, PathBuf>,
    shutdown: CancellationToken,
) {
    let (sender, mut changes) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any
            )
        {
            for path in event.paths {
                let _ = sender.send(path);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::error!(%error, "cannot watch handler files; --watch is off");
            return;
        }
    };
    // (directory, file name) -> handler name.
    let mut watched: HashMap<(PathBuf, std::ffi::OsString), String> = HashMap::new();
    let mut last_deployed: HashMap<String, String> = HashMap::new();
    for (name, path) in &entries {
        let dir = directory_of(path);
        let Some(file) = path.file_name() else {
            continue;
        };
        if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::error!(handler = %name, dir = %dir.display(), %error, "cannot watch this directory");
            continue;
        }
        watched.insert((canonical(&dir), file.to_owned()), name.clone());
        if let Ok(bytes) = std::fs::read(path) {
            last_deployed.insert(name.clone(), sha256_hex(&bytes));
        }
        tracing::info!(handler = %name, file = %path.display(), "watching for changes");
    }
    loop {
        let first = tokio::select! {
            path = changes.recv() => match path { Some(path) => path, None => return },
            _ = shutdown.cancelled() => return,
        };
        let mut touched = vec![first];
        // Let the burst settle, collecting everything it touched.
        loop {
            tokio::select! {
                path = changes.recv() => match path { Some(path) => touched.push(path), None => return },
                _ = tokio::time::sleep(SETTLE) => break,
                _ = shutdown.cancelled() => return,
            }
        }
        let mut names: Vec<&String> = touched
            .iter()
            .filter_map(|path| Some((canonical(&directory_of(path)), path.file_name()?.to_owned())))
            .filter_map(|key| watched.get(&key))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let Some(path) = entries.get(name) else {
                continue;
            };
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let sha256 = sha256_hex(&bytes);
            if last_deployed.get(name) == Some(&sha256) {
                continue;
            }
            last_deployed.insert(name.clone(), sha256);
            match deploy_file(&handlers, name, path).await {
                Ok(deployed) => {
                    tracing::info!(handler = %name, version = %deployed.version, changed = deployed.changed, "watched file deployed")
                }
                Err(error) => {
                    tracing::warn!(handler = %name, error = %format!("{error:#}"), "watched file rejected; the active version keeps serving")
                }
            }
        }
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_spec_names_the_handler_or_takes_the_file_stem() {
        assert_eq!(
            parse_spec("chat=target/x/chat.wasm"),
            Ok(("chat".into(), PathBuf::from("target/x/chat.wasm")))
        );
        assert_eq!(
            parse_spec("guest/echo_v1.wasm"),
            Ok(("echo-v1".into(), PathBuf::from("guest/echo_v1.wasm")))
        );
        assert!(parse_spec("Bad Name=x.wasm").is_err_and(|e| e.contains("NAME=PATH")));
        assert!(parse_spec("chat=").is_err());
    }
}
