//! Builds the handler components in `guest/` for wasm32-wasip2 and hands them to
//! the host as `$OUT_DIR/{chat,pipeline}.wasm`, so that `cargo build`, `cargo run`
//! and `cargo test` never need a manual guest build step.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[&str] = &["chat", "embed", "pipeline"];
/// Test-only handlers from guest/fixtures, copied beside the guests for the e2e
/// tests (`include_bytes!(concat!(env!("OUT_DIR"), ...))`); never embedded in the host.
const FIXTURES: &[&str] = &["echo_v1", "echo_v2", "echo_trap", "noop"];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ lives in the workspace root");
    let guest_dir = root.join("guest");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The guests' own target dir: a nested cargo must not share (and wait on) ours.
    let target_dir = root.join("target").join("guests");

    for path in [
        "wit",
        "guest/Cargo.toml",
        "guest/Cargo.lock",
        "guest/.cargo",
        "guest/fixtures",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    for entry in std::fs::read_dir(&guest_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.path().join("Cargo.toml").exists() {
            println!(
                "cargo:rerun-if-changed={}",
                entry.path().join("Cargo.toml").display()
            );
            println!(
                "cargo:rerun-if-changed={}",
                entry.path().join("src").display()
            );
        }
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&guest_dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(_) => panic!(
            "building the guest components in {} failed (see above). If the error mentions wasm32-wasip2, run `rustup target add wasm32-wasip2`.",
            guest_dir.display()
        ),
        Err(e) => panic!("could not run cargo to build the guests: {e}"),
    }
    // Lets tests run the guests' own unit tests natively, for this same target.
    println!(
        "cargo:rustc-env=SPOOL_HOST_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    for guest in GUESTS.iter().chain(FIXTURES) {
        copy(
            &target_dir
                .join("wasm32-wasip2/release")
                .join(format!("{guest}.wasm")),
            &out_dir.join(format!("{guest}.wasm")),
        );
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!("guest build produced no {}: {e}", from.display());
    }
}
