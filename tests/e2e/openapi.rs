//! The API's description against the API: `/openapi.json` is OpenAPI 3.1 and
//! covers every route, and schemathesis (installed by
//! `tests/openapi/install-schemathesis`, configured by
//! `tests/openapi/schemathesis.toml`) runs all its phases — examples, coverage,
//! fuzzing, stateful — and all its checks against a live `spool serve` that
//! requires keys, finding nothing.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::{HostOptions, Stack, admin_token};

/// Keys required (so schemathesis' auth checks mean something) and quick
/// pings, so reading a few events of a waiting job's stream takes no time.
const CONFIG: &str = "[auth]\nanonymous = false\n\n[sessions]\nping_interval_ms = 100\n";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_is_openapi_3_1_and_covers_every_route() {
    let stack = Stack::start(HostOptions {
        config: CONFIG.into(),
        ..HostOptions::default()
    })
    .await;
    // Open to anyone, like the page and the health probes.
    let (status, description) = crate::support::Api::with_key(None)
        .get(&stack.host.url("/openapi.json"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(description["openapi"], "3.1.0");
    let paths = description["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/api/chat", &["post"][..]),
        ("/api/job/{id}", &["get", "delete"]),
        ("/stream/status/{id}", &["get"]),
        ("/ws", &["get"]),
        ("/api/v1/sessions/{sid}/messages", &["get", "post"]),
        ("/api/v1/sessions/{sid}/messages/{mid}/stream", &["get"]),
        ("/api/queues/{queue}/dead/{job}/replay", &["post"]),
        ("/admin/handlers/{name}/versions", &["post"]),
        ("/admin/keys", &["get", "post"]),
        ("/health/ready", &["get"]),
    ] {
        for method in methods {
            let operation = &paths[path][method];
            assert!(operation.is_object(), "{method} {path} is not described");
            // Every operation says what its errors look like.
            assert_eq!(
                operation["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path}"
            );
        }
    }
    // Keys are required but where a route says otherwise.
    assert_eq!(paths["/api/chat"]["post"].get("security"), None);
    assert!(
        description["security"]
            .as_array()
            .is_some_and(|s| s.len() == 2)
    );
    assert_eq!(paths["/health"]["get"]["security"], serde_json::json!([{}]));
    // A chat submission leads to its job.
    assert_eq!(
        paths["/api/chat"]["post"]["responses"]["202"]["links"]["get_job"]["operationId"],
        "get_job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_any_route() {
    let schemathesis = std::env::var_os("SPOOL_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/schemathesis/bin/schemathesis"));
    assert!(
        schemathesis.exists(),
        "{} is missing: run tests/openapi/install-schemathesis (the README's test command does)",
        schemathesis.display()
    );
    let stack = Stack::start(HostOptions {
        config: CONFIG.into(),
        ..HostOptions::default()
    })
    .await;
    let (_, description) = stack.api.get(&stack.host.url("/openapi.json")).await;
    let operations: usize = description["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |methods| methods.len()))
        .sum();

    let reports = tempfile::tempdir().expect("temp dir");
    let har = reports.path().join("requests.har");
    let run = tokio::task::spawn_blocking({
        let url = stack.host.url("/openapi.json");
        let har = har.clone();
        let reports_dir = reports.path().to_owned();
        move || {
            Command::new(schemathesis)
                // Its example database and reports stay in the temp dir.
                .current_dir(&reports_dir)
                .arg("--config-file")
                .arg(repo_root().join("tests/openapi/schemathesis.toml"))
                // One worker: CPython 3.11's compile() can fail under threads
                // ("AST constructor recursion depth mismatch"), which
                // schemathesis reports as its own error.
                .args(["run", &url, "--no-color", "--workers", "1"])
                .args([
                    "--seed",
                    "1",
                    "--max-examples",
                    "25",
                    "--request-timeout",
                    "5",
                ])
                .args(["--report", "har", "--report-har-path"])
                .arg(&har)
                .arg("-H")
                .arg(format!("Authorization: Bearer {}", admin_token()))
                .output()
        }
    });
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis finished within 5 minutes")
        .expect("join")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found failures (above); spool's log:\n{}",
        stack.host.log_text()
    );
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "schemathesis did not test all {operations} operations"
    );
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(
            report.contains(&format!("✅ {phase}")),
            "phase {phase} did not pass"
        );
    }
    let har: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&har).expect("the HAR report")).expect("HAR JSON");
    let requests = har["log"]["entries"].as_array().map_or(0, Vec::len);
    assert!(
        requests > operations * 10,
        "only {requests} requests were made"
    );
    println!("schemathesis made {requests} requests to {operations} operations");
}
