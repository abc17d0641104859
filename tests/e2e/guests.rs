//! The guests' own unit tests (their pure rules: priorities, prompt shaping,
//! content parsing), run natively so that `cargo test --workspace` covers them.

use std::path::Path;
use std::process::Command;

#[test]
fn guest_crates_pass_their_unit_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let output = Command::new(env!("CARGO"))
        .current_dir(root.join("guest"))
        .args(["test", "--quiet", "--target", env!("SPOOL_HOST_TARGET")])
        // Beside the guests' wasm build, not in the workspace's (locked) target dir.
        .env("CARGO_TARGET_DIR", root.join("target").join("guests"))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo test for the guests");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "guest unit tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let passed: usize = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(
        passed >= 30,
        "expected the guests' unit tests to run, saw {passed}:\n{stdout}"
    );
}
