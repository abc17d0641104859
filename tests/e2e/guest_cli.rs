//! `spool guest test` and `spool guest new` (issue #6): testing guests in
//! isolation, with no Redis and no model server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::{Value, json};

use crate::sandbox::adversary_wasm;
use crate::support::{SPOOL, built_in};

fn spool(args: &[&str], dir: &Path) -> Output {
    Command::new(SPOOL)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spool runs")
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not a JSON report ({e}); stdout: {} stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn write_built_in(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, built_in(name)).expect("write component");
    path
}

#[test]
fn guest_test_runs_a_fixture_and_its_exit_code_says_pass_or_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let chat = write_built_in(dir.path(), "chat");
    let fixture = json!({
        "hook": "handle",
        "job": {"payload": {"prompt": "hello", "conversationHistory": [{"role": "user", "content": "hi"}]}},
        "replies": [{"text": "<think>greet</think>Hello!", "model": "tiny"}],
        "expect": {
            "returned": {"ok": {"result": {"response": "<think>greet</think>Hello!", "model": "tiny"},
                                "blocks": [{"type": "thinking", "text": "greet"}, {"type": "text", "text": "Hello!"}]}},
            "eventTypes": ["task_progress", "task_progress", "text_delta", "task_progress"],
            "modelCalls": 1,
            "logContains": "answered by tiny"
        }
    });
    let path = dir.path().join("fixture.json");
    std::fs::write(&path, fixture.to_string()).expect("write fixture");
    let output = spool(
        &[
            "guest",
            "test",
            chat.to_str().unwrap(),
            "--fixture",
            path.to_str().unwrap(),
        ],
        dir.path(),
    );
    let passed = report(&output);
    assert!(output.status.success(), "{passed:#}");
    assert_eq!(passed["pass"], true);
    assert_eq!(
        passed["modelRequests"][0]["request"]["messages"][1],
        json!({"role": "user", "content": "hi"})
    );

    // The same fixture with a wrong expectation fails, and says which.
    let mut wrong = fixture.clone();
    wrong["expect"]["modelCalls"] = json!(2);
    std::fs::write(&path, wrong.to_string()).expect("write fixture");
    let output = spool(
        &[
            "guest",
            "test",
            chat.to_str().unwrap(),
            "--fixture",
            path.to_str().unwrap(),
        ],
        dir.path(),
    );
    let failed = report(&output);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(failed["pass"], false);
    let failing: Vec<&Value> = failed["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] == false)
        .collect();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0]["found"], "1");

    // Flags alone, no fixture: the admit hook of the priority rule.
    let output = spool(
        &[
            "guest",
            "test",
            chat.to_str().unwrap(),
            "--hook",
            "admit",
            "--payload",
            r#"{"prompt":"x"}"#,
        ],
        dir.path(),
    );
    assert!(output.status.success());
    assert_eq!(
        report(&output)["returned"],
        json!({"ok": {"class": "normal", "score": 5}})
    );
}

#[test]
fn guest_test_reports_typed_sandbox_failures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let adversary = adversary_wasm();
    let adversary = adversary.to_str().unwrap();
    let run = |payload: &str, extra: &[&str]| {
        let mut args = vec!["guest", "test", adversary, "--payload", payload];
        args.extend_from_slice(extra);
        let output = spool(&args, dir.path());
        assert_eq!(
            output.status.code(),
            Some(1),
            "a failing hook fails the test"
        );
        report(&output)
    };
    let panicked = run(r#"{"mode":"panic"}"#, &[]);
    assert_eq!(panicked["failure"]["kind"], "panic");
    assert!(
        panicked["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("adversary panics on purpose")
    );
    assert!(
        panicked["output"].as_str().unwrap().contains("panicked at"),
        "stderr is captured: {panicked}"
    );

    let looped = run(r#"{"mode":"loop"}"#, &["--deadline-ms", "300"]);
    assert_eq!(looped["failure"]["kind"], "deadline");

    let capped = run(
        r#"{"mode":"model_calls"}"#,
        &[
            "--max-model-calls",
            "3",
            "--reply",
            "a",
            "--reply",
            "b",
            "--reply",
            "c",
        ],
    );
    assert_eq!(capped["failure"]["kind"], "call_cap_exceeded");
    assert_eq!(capped["modelRequests"].as_array().unwrap().len(), 3);
}

/// `spool guest new demo`, build the component, `spool guest test` it with
/// the fixture the scaffold wrote. Builds into guest/'s target dir (same
/// release profile), so only the demo crate itself is compiled.
#[test]
fn guest_new_scaffolds_a_handler_that_builds_and_passes_guest_test() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = spool(&["guest", "new", "demo"], dir.path());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let demo = dir.path().join("demo");
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "tests/handler.rs",
        "fixture.json",
    ] {
        assert!(demo.join(file).exists(), "scaffold has {file}");
    }
    // The contract comes with spool-sdk, so there is no copy of it to go stale.
    assert!(!demo.join("wit").exists(), "scaffold has no wit/");
    let again = spool(&["guest", "new", "demo"], dir.path());
    assert!(!again.status.success(), "refuses to overwrite");
    let bad = spool(&["guest", "new", "Bad Name"], dir.path());
    assert!(!bad.status.success());

    let target = root().join("target").join("guests");
    let status = Command::new(env!("CARGO"))
        .current_dir(&demo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the scaffold builds");
    let wasm = target.join("wasm32-wasip2/release/demo.wasm");
    let output = spool(
        &[
            "guest",
            "test",
            wasm.to_str().unwrap(),
            "--fixture",
            "fixture.json",
        ],
        &demo,
    );
    let passed = report(&output);
    assert!(output.status.success(), "{passed:#}");
    assert_eq!(passed["returned"]["ok"]["result"]["response"], "Hi there!");
}

/// The scaffold's own harness test: `cargo test` in the new crate, cold (a
/// target dir of its own), with the `spool` under test as `SPOOL_BIN`. The
/// harness drives that binary instead of linking the host, so the new crate
/// compiles none of wasmtime: the point of this test as much as the pass.
/// The cold time is printed (`-- --nocapture`).
#[test]
fn guest_new_scaffold_passes_its_own_test_without_compiling_wasmtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = spool(&["guest", "new", "demo"], dir.path());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let target = dir.path().join("target");
    let started = Instant::now();
    let output = Command::new(env!("CARGO"))
        .current_dir(dir.path().join("demo"))
        .arg("test")
        .env("CARGO_TARGET_DIR", &target)
        .env("SPOOL_BIN", SPOOL)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "the scaffold's harness test passes:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("test answers_with_the_model_reply_and_retries_on_a_rate_limit ... ok"),
        "{stdout}"
    );
    let compiled = compiled_crates(&target);
    assert!(
        !compiled.is_empty(),
        "nothing found under {}",
        target.display()
    );
    let host: Vec<&String> = compiled
        .iter()
        .filter(|name| {
            ["wasmtime", "cranelift", "tokio"]
                .iter()
                .any(|c| name.contains(c))
        })
        .collect();
    assert!(host.is_empty(), "the scaffold compiled the host: {host:?}");
    eprintln!(
        "cold `cargo test` of a new handler crate: {:.1} s",
        took.as_secs_f64()
    );
}

/// The names under `build/` and `deps/` of every profile dir in a target dir
/// (native and wasm32-wasip2): one or more per compiled crate.
fn compiled_crates(target: &Path) -> Vec<String> {
    let profiles = ["debug", "release", "wasm32-wasip2/release"];
    profiles
        .iter()
        .flat_map(|profile| ["build", "deps"].map(|dir| target.join(profile).join(dir)))
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
