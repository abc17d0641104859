//! `spool guest new`: writes a handler crate from the templates next to this
//! file, depending on this spool checkout's guest SDK (which carries the WIT
//! contract) and harness, with a lockfile pinned to the versions the checkout
//! builds with. Writes only inside the new directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const CARGO_TOML: &str = include_str!("template/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("template/lib.rs.tmpl");
const HANDLER_TEST: &str = include_str!("template/handler_test.rs.tmpl");
const FIXTURE: &str = include_str!("template/fixture.json.tmpl");
const README: &str = include_str!("template/README.md.tmpl");

pub fn create(name: &str, dir: &Path, spool_path: &Path) -> Result<()> {
    if !valid_name(name) {
        bail!(
            "`{name}` is not a valid handler name: use 1-64 of a-z, 0-9, '-' or '_', starting with a letter"
        );
    }
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    let harness = spool_path.join("host").join("harness");
    if !harness.join("Cargo.toml").exists() {
        bail!(
            "no spool-harness crate at {}: pass --spool-path pointing at a spool checkout",
            harness.display()
        );
    }
    let harness = harness
        .canonicalize()
        .with_context(|| format!("resolving {}", harness.display()))?;
    let sdk = spool_path.join("guest").join("sdk");
    if !sdk.join("Cargo.toml").exists() {
        bail!(
            "no spool-sdk crate at {}: pass --spool-path pointing at a spool checkout",
            sdk.display()
        );
    }
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("resolving {}", sdk.display()))?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate_file}}", &name.replace('-', "_"))
            .replace("{{harness_path}}", &harness.display().to_string())
            .replace("{{sdk_path}}", &sdk.display().to_string())
    };
    let files: [(PathBuf, String); 5] = [
        ("Cargo.toml".into(), fill(CARGO_TOML)),
        ("src/lib.rs".into(), fill(LIB_RS)),
        ("tests/handler.rs".into(), fill(HANDLER_TEST)),
        ("fixture.json".into(), fill(FIXTURE)),
        ("README.md".into(), fill(README)),
    ];
    for (path, contents) in files {
        write(&dir.join(path), &contents)?;
    }
    write(&dir.join(".gitignore"), "/target\n")?;
    if let Some(lock) = pinned_lockfile(spool_path) {
        write(&dir.join("Cargo.lock"), &lock)?;
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn write(path: &Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// The union of the host's and the guests' lockfiles: the new crate then uses
/// the dependency versions this checkout is built and tested with (cargo drops
/// the entries it does not need). `None` when neither lockfile is readable.
fn pinned_lockfile(spool_path: &Path) -> Option<String> {
    let mut packages: Vec<toml::Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for lock in [
        spool_path.join("Cargo.lock"),
        spool_path.join("guest").join("Cargo.lock"),
    ] {
        let Ok(text) = std::fs::read_to_string(&lock) else {
            continue;
        };
        let Ok(parsed) = text.parse::<toml::Table>() else {
            continue;
        };
        let Some(toml::Value::Array(entries)) = parsed.get("package") else {
            continue;
        };
        for entry in entries {
            let key = (
                entry.get("name").map(|v| v.to_string()),
                entry.get("version").map(|v| v.to_string()),
            );
            // Workspace members of the source locks are no packages of the new crate.
            let from_registry = entry.get("source").is_some();
            let is_harness_dep = matches!(
                entry.get("name").and_then(|v| v.as_str()),
                Some("spool-harness" | "spool-fixture")
            );
            if (from_registry || is_harness_dep) && seen.insert(key) {
                packages.push(entry.clone());
            }
        }
    }
    if packages.is_empty() {
        return None;
    }
    let mut lock = toml::Table::new();
    lock.insert("version".into(), toml::Value::Integer(4));
    lock.insert("package".into(), toml::Value::Array(packages));
    toml::to_string(&lock).ok().map(|text| {
        format!("# Pinned by `spool guest new` to the versions spool builds with.\n{text}")
    })
}
