//! Finding the `spool` binary and running `spool guest test` with it: the
//! fixture goes in on stdin, the JSON report comes back on stdout. Owns the
//! command line; the engine, and so the sandbox, is the binary's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use spool_fixture::{Fixture, Report};

/// Sandbox limits as `spool guest test` flags; `None` keeps the host default.
#[derive(Clone, Debug, Default)]
pub(crate) struct Limits {
    pub deadline_ms: Option<u64>,
    pub memory_mb: Option<usize>,
    pub max_model_calls: Option<u32>,
}

impl Limits {
    fn args(&self) -> Vec<String> {
        let flags = [
            ("--deadline-ms", self.deadline_ms.map(|v| v.to_string())),
            ("--memory-mb", self.memory_mb.map(|v| v.to_string())),
            (
                "--max-model-calls",
                self.max_model_calls.map(|v| v.to_string()),
            ),
        ];
        flags
            .into_iter()
            .filter_map(|(flag, value)| Some([flag.to_owned(), value?]))
            .flatten()
            .collect()
    }
}

/// `$SPOOL_BIN`, else `spool` on the `PATH`.
pub(crate) fn find() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SPOOL_BIN").filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("SPOOL_BIN is {}, which is no file", path.display());
        }
        return Ok(path);
    }
    let exe = format!("spool{}", std::env::consts::EXE_SUFFIX);
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&exe))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            // This crate lives in host/harness of the checkout whose host it tests.
            let harness = Path::new(env!("CARGO_MANIFEST_DIR"));
            let host = harness.parent().unwrap_or(harness);
            anyhow!(
                "no `spool` binary to run the component: install it with \
                 `cargo install --path {}`, or set SPOOL_BIN to one",
                host.display()
            )
        })
}

/// Runs `spool guest test <component> --fixture -` and reads its report,
/// whether or not the fixture's checks held.
pub(crate) fn guest_test(
    spool: &Path,
    component: &Path,
    limits: &Limits,
    fixture: &Fixture,
) -> Result<Report> {
    let input = serde_json::to_vec(fixture).context("serialising the fixture")?;
    let mut child = Command::new(spool)
        .args(["guest", "test"])
        .arg(component)
        .args(["--fixture", "-"])
        .args(limits.args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", spool.display()))?;
    // spool reads all of stdin before it writes a byte, so this cannot
    // deadlock; a write error means it exited early, and its stderr says why.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&input);
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", spool.display()))?;
    let why = match serde_json::from_slice(&output.stdout) {
        Ok(report) => return Ok(report),
        // Nothing on stdout: it could not run, and says why on stderr.
        Err(_) if output.stdout.is_empty() => {
            String::from_utf8_lossy(&output.stderr).trim().to_owned()
        }
        Err(error) => {
            format!("its output is no report ({error}); is that `spool` older than this harness?")
        }
    };
    bail!(
        "`{} guest test {}` failed ({}): {why}",
        spool.display(),
        component.display(),
        output.status
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_flags_and_defaults_none() {
        assert!(Limits::default().args().is_empty());
        let limits = Limits {
            deadline_ms: Some(300),
            max_model_calls: Some(3),
            ..Limits::default()
        };
        assert_eq!(
            limits.args(),
            ["--deadline-ms", "300", "--max-model-calls", "3"]
        );
    }
}
