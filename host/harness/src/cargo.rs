//! Building a handler crate into its component with `cargo build --release
//! --target wasm32-wasip2`. Cargo decides the target dir (`CARGO_TARGET_DIR`,
//! the workspace's, or the crate's own) and says in its messages where the
//! component is; this module writes nothing itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Builds the crate at `crate_dir` and returns its component's path.
pub fn build_component(crate_dir: &Path) -> Result<PathBuf> {
    let manifest = crate_dir
        .join("Cargo.toml")
        .canonicalize()
        .with_context(|| format!("no Cargo.toml in {}", crate_dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        // Diagnostics rendered on stderr for the reader, JSON on stdout for us.
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        // Flags meant for the native test build must not reach the wasm one.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!(
            "building the component of {} failed (see above; is the target installed? \
             `rustup target add wasm32-wasip2`)",
            manifest.display()
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path())
        })
        .flat_map(|message| wasm_files(&message))
        .last()
        .with_context(|| {
            format!(
                "cargo built no component for {}: is its crate-type \"cdylib\"?",
                manifest.display()
            )
        })
}

fn wasm_files(artifact: &Value) -> Vec<PathBuf> {
    artifact["filenames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|name| name.ends_with(".wasm"))
        .map(PathBuf::from)
        .collect()
}
