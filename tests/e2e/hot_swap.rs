//! Hot-swappable handlers (issue #5): deploy and roll back under load on two
//! instances without losing or failing a job, rejected uploads that change
//! nothing, the compiled cache, version pins, the periodic check that heals a
//! missed notification, and the `--watch` dev loop.
//!
//! The test handler is `echo` (guest/fixtures): each build writes its version
//! number into every result, so a result names the version that ran it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const ECHO_V1: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_v1.wasm"));
pub const ECHO_V2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_v2.wasm"));
const ECHO_TRAP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_trap.wasm"));
const WAIT: Duration = Duration::from_secs(60);

fn version(bytes: &[u8]) -> String {
    spool_runtime::content_version(bytes)
}

/// Fixture files, a shared compiled cache, and the TOML that seeds `echo` v1
/// and routes queue `echo` to it.
struct Fixtures {
    dir: tempfile::TempDir,
}

impl Fixtures {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("spool-fixtures-")
            .tempdir()
            .expect("temp dir");
        for (name, bytes) in [
            ("echo_v1.wasm", ECHO_V1),
            ("echo_v2.wasm", ECHO_V2),
            ("echo_trap.wasm", ECHO_TRAP),
        ] {
            std::fs::write(dir.path().join(name), bytes).expect("write fixture");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[registry]\ncache_dir = \"{}\"\n{extra}\n[handlers.echo]\npath = \"{}\"\n\n[queues.echo]\nhandler = \"echo\"\nmax_attempts = 1\n",
            self.path("compiled").display(),
            self.path("echo_v1.wasm").display()
        )
    }
}

async fn submit(api: &Api, host: &Host, queue: &str, payload: Value) -> String {
    let (status, reply) = api
        .post(
            &host.url(&format!("/api/queues/{queue}/jobs")),
            &json!({ "payload": payload }),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    reply["jobId"].as_str().unwrap_or_default().to_owned()
}

/// Runs one job on `queue` and returns the version number its result names.
async fn run_one(api: &Api, host: &Host, queue: &str) -> u64 {
    let id = submit(api, host, queue, json!({})).await;
    let job = api.wait_terminal(host, &id, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");
    job["result"]["version"].as_u64().unwrap_or(0)
}

async fn echo_status(api: &Api, host: &Host) -> Value {
    let (status, body) = api.get(&host.url("/admin/handlers/echo")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs the CLI to completion; returns (success, stdout, stderr).
async fn cli(args: Vec<String>) -> (bool, String, String) {
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new(SPOOL).args(&args).output())
            .await
            .expect("cli task")
            .expect("run spool");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One switch as the registry recorded it: when it was committed and when
/// each instance switched (both in ms, same machine clock).
struct Switch {
    activated_at: u64,
    switched_at: HashMap<String, u64>,
    latency_ms: u64,
}

fn read_switch(status: &Value, expected_version: &str) -> Switch {
    let activation = &status["history"][0];
    assert_eq!(activation["version"], expected_version, "{status}");
    let activated_at = activation["at"].as_u64().unwrap_or(0);
    let instances = status["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(instances.len(), 2, "both instances are live: {status}");
    let mut switched_at = HashMap::new();
    for instance in &instances {
        assert_eq!(instance["switched"], true, "{status}");
        switched_at.insert(
            instance["instance"].as_str().unwrap_or_default().to_owned(),
            instance["switchedAt"].as_u64().unwrap_or(0),
        );
    }
    let latency_ms = switched_at
        .values()
        .max()
        .copied()
        .unwrap_or(0)
        .saturating_sub(activated_at);
    Switch {
        activated_at,
        switched_at,
        latency_ms,
    }
}

/// Submits two long jobs (60 model calls each) and waits until both run, so
/// they are in flight when the version switches.
async fn start_long_jobs(api: &Api, host: &Host) -> Vec<String> {
    let ids = vec![
        submit(api, host, "echo", json!({"calls": 60})).await,
        submit(api, host, "echo", json!({"calls": 60})).await,
    ];
    for id in &ids {
        let started = Instant::now();
        loop {
            let (_, job) = api.get(&host.url(&format!("/api/job/{id}"))).await;
            if job["state"] == "active" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "long job never started: {job}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    ids
}

/// Where and when a job started, from its record.
fn started_on(job: &Value) -> (String, u64) {
    let worker = job["worker"].as_str().unwrap_or_default().to_owned();
    let started_at = job["startedAt"].as_u64();
    // Consumers are named `{instance}-w{index}`.
    let instance = worker
        .rsplit_once("-w")
        .map(|(instance, _)| instance.to_owned())
        .unwrap_or(worker);
    (instance, started_at.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_then_rollback_under_load_on_two_instances_neither_fails_nor_loses_a_job() {
    let redis = Redis::start();
    deploy_and_rollback_under_load(&redis.url()).await;
}

/// The hot-swap scenario on the Redis (or cluster) at `redis_url`.
pub async fn deploy_and_rollback_under_load(redis_url: &str) {
    let stub = stub().await;
    stub.set_timing(30, 0); // one model call: ~30 ms; a long job: ~2 s
    let fixtures = Fixtures::new();
    let options = HostOptions {
        concurrency: 4,
        config: fixtures.config(""),
        ..Default::default()
    };
    let host_a = Host::start_at(redis_url, &stub, options.clone());
    let host_b = Host::start_at(redis_url, &stub, options);
    let api = Api::default();
    let (v1, v2) = (version(ECHO_V1), version(ECHO_V2));
    assert_eq!(echo_status(&api, &host_a).await["active"], v1.as_str());

    // ~50 jobs/s for 20 s, alternating between the two instances.
    let submitted: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = {
        let (submitted, refused, api) = (submitted.clone(), refused.clone(), api.clone());
        let urls = [
            host_a.url("/api/queues/echo/jobs"),
            host_b.url("/api/queues/echo/jobs"),
        ];
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut posts = tokio::task::JoinSet::new();
            for i in 0..1000usize {
                tick.tick().await;
                let (url, api, submitted, refused) = (
                    urls[i % 2].clone(),
                    api.clone(),
                    submitted.clone(),
                    refused.clone(),
                );
                posts.spawn(async move {
                    let (status, reply) = api.post(&url, &json!({"payload": {"n": i}})).await;
                    match (status, reply["jobId"].as_str()) {
                        (202, Some(id)) => submitted.lock().expect("lock").push(id.to_owned()),
                        _ => refused
                            .lock()
                            .expect("lock")
                            .push(format!("{status} {reply}")),
                    }
                });
            }
            while posts.join_next().await.is_some() {}
        })
    };

    tokio::time::sleep(Duration::from_secs(5)).await;
    let long_v1 = start_long_jobs(&api, &host_a).await;
    let path = fixtures.path("echo_v2.wasm").display().to_string();
    let (ok, out, err) = cli(vec![
        "deploy".into(),
        path,
        "--handler".into(),
        "echo".into(),
        "--server".into(),
        host_a.base.clone(),
    ])
    .await;
    assert!(ok, "deploy failed:\n{out}\n{err}");
    assert!(out.contains("switched on 2/2 instances"), "{out}\n{err}");
    let deploy = read_switch(&echo_status(&api, &host_b).await, &v2);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let long_v2 = start_long_jobs(&api, &host_b).await;
    let (ok, out, err) = cli(vec![
        "rollback".into(),
        "echo".into(),
        "--server".into(),
        host_b.base.clone(),
    ])
    .await;
    assert!(ok, "rollback failed:\n{out}\n{err}");
    assert!(
        out.contains(&format!("version {v1} active (was {v2})")),
        "{out}"
    );
    let rollback = read_switch(&echo_status(&api, &host_a).await, &v1);

    load.await.expect("load task");
    let refused = refused.lock().expect("lock").clone();
    assert!(refused.is_empty(), "submissions refused: {refused:?}");
    let mut ids = submitted.lock().expect("lock").clone();
    assert_eq!(ids.len(), 1000);
    ids.extend(long_v1.iter().chain(&long_v2).cloned());

    let mut ran = HashMap::from([(1u64, 0usize), (2, 0)]);
    for id in &ids {
        let job = api.wait_terminal(&host_a, id, WAIT).await;
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        let number = job["result"]["version"].as_u64().unwrap_or(0);
        let expected_hash = match number {
            1 => &v1,
            2 => &v2,
            _ => panic!("result names no version: {job}"),
        };
        assert_eq!(
            job["handlerVersion"],
            expected_hash.as_str(),
            "the record and the result agree: {job}"
        );
        *ran.entry(number).or_default() += 1;

        // No job started on an instance after that instance switched ran the
        // old version; jobs started before a switch was committed ran the old one.
        // A job's recorded start is the moment its worker resolved the version
        // (read under the lock a switch takes, as the switch's own time is), so
        // the comparison holds however long the claim took on a busy machine.
        let (instance, started_at) = started_on(&job);
        let deployed_here = deploy
            .switched_at
            .get(&instance)
            .copied()
            .unwrap_or_else(|| panic!("unknown instance {instance}"));
        let rolled_back_here = rollback
            .switched_at
            .get(&instance)
            .copied()
            .unwrap_or(u64::MAX);
        if started_at < deploy.activated_at || started_at > rolled_back_here {
            assert_eq!(number, 1, "job {id} started at {started_at} on {instance}");
        } else if started_at > deployed_here && started_at < rollback.activated_at {
            assert_eq!(
                number, 2,
                "job {id} started at {started_at} on {instance} after it switched at {deployed_here}"
            );
        }
    }
    // Jobs in flight at a switch finished on the version they started on.
    for (ids, number, switch) in [(&long_v1, 1, &deploy), (&long_v2, 2, &rollback)] {
        for id in ids {
            let (_, job) = api.get(&host_a.url(&format!("/api/job/{id}"))).await;
            assert_eq!(job["result"]["version"], number, "{job}");
            let finished = job["finishedAt"].as_u64().unwrap_or(0);
            assert!(
                switch.switched_at.values().all(|&at| finished > at),
                "job {id} was still running when every instance had switched: {job}"
            );
        }
    }
    assert!(
        ran[&1] > 200 && ran[&2] > 200,
        "both versions served a share of the load: {ran:?}"
    );
    let (_, stats) = api.get(&host_a.url("/api/queue/stats")).await;
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["completed"], ids.len(), "{stats}");
    println!(
        "hot swap under load: {} jobs, v1 ran {} and v2 ran {}; switch latency (deploy accepted -> last instance switched): deploy {} ms, rollback {} ms",
        ids.len(),
        ran[&1],
        ran[&2],
        deploy.latency_ms,
        rollback.latency_ms
    );
}

/// The moment a job's start is recorded is the moment its version is chosen,
/// however long the claim takes to come back: the deploy below lands while
/// the claimed job is held (as a busy machine may hold it), and the job still
/// runs the version that was active when its start was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_the_version_active_when_its_start_was_recorded_even_if_a_switch_lands_before_it_runs()
 {
    let redis = Redis::start();
    let stub = stub().await;
    let fixtures = Fixtures::new();
    let gate = fixtures.path("gate");
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            concurrency: 1,
            config: fixtures.config(""),
            env: vec![(
                "SPOOL_FAULT_HOLD_CLAIMED_JOBS".into(),
                gate.display().to_string(),
            )],
            ..Default::default()
        },
    );
    let api = Api::default();
    let (v1, v2) = (version(ECHO_V1), version(ECHO_V2));
    let id = submit(&api, &host, "echo", json!({})).await;
    let started = Instant::now();
    while api.get(&host.url(&format!("/api/job/{id}"))).await.1["state"] != "active" {
        assert!(started.elapsed() < WAIT, "the job was never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let path = fixtures.path("echo_v2.wasm").display().to_string();
    let (ok, out, err) = cli(vec![
        "deploy".into(),
        path,
        "--handler".into(),
        "echo".into(),
        "--server".into(),
        host.base.clone(),
    ])
    .await;
    assert!(ok, "deploy failed:\n{out}\n{err}");
    assert!(out.contains("switched on 1/1 instances"), "{out}\n{err}");
    let status = echo_status(&api, &host).await;
    assert_eq!(status["history"][0]["version"], v2.as_str(), "{status}");
    let activated_at = status["history"][0]["at"].as_u64().unwrap_or(0);
    std::fs::write(&gate, "").expect("open the gate");

    let job = api.wait_terminal(&host, &id, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");
    let (_, started_at) = started_on(&job);
    assert!(
        started_at < activated_at,
        "the job's start ({started_at}) was recorded before v2 was activated ({activated_at})"
    );
    assert_eq!(
        (
            job["result"]["version"].as_u64(),
            job["handlerVersion"].as_str()
        ),
        (Some(1), Some(v1.as_str())),
        "a job whose start was recorded before the switch runs the version before it: {job}"
    );
    // Jobs after the switch run v2 (the gate stays open).
    assert_eq!(run_one(&api, &host, "echo").await, 2);
}

/// Posts `bytes` as a new `echo` version; returns (status, error code, message).
async fn upload(api: &Api, host: &Host, bytes: Vec<u8>) -> (u16, String, String) {
    let (status, reply) = api
        .upload(&host.url("/admin/handlers/echo/versions"), bytes)
        .await;
    let code = reply["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let message = reply["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_rejected_with_a_message_naming_the_problem_and_the_active_version_keeps_serving()
 {
    let redis = Redis::start();
    let stub = stub().await;
    let fixtures = Fixtures::new();
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config: fixtures.config("max_component_mb = 1"),
            ..Default::default()
        },
    );
    let api = Api::default();
    let v1 = version(ECHO_V1);
    let wat = |text: &str| wat::parse_str(text).expect("valid WAT");

    let other_world = wat(r#"(component
        (core module $m (func (export "hello")))
        (core instance $i (instantiate $m))
        (func (export "hello") (canon lift (core func $i "hello"))))"#);
    let wrong_types = wat(r#"(component
        (core module $m (func (export "f")))
        (core instance $i (instantiate $m))
        (func $f (canon lift (core func $i "f")))
        (instance $hooks
            (export "admit" (func $f)) (export "shape-prompt" (func $f))
            (export "parse-content" (func $f)) (export "handle" (func $f)))
        (export "spool:handler/hooks@0.2.0" (instance $hooks)))"#);
    let foreign_import = wat(r#"(component (import "acme:db/query" (func)))"#);
    // (case, upload, status, error code, words the message mentions)
    type Case<'a> = (&'a str, Vec<u8>, u16, &'a str, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "not wasm",
            b"#!/bin/sh\necho definitely not wasm\n".to_vec(),
            422,
            "not_wasm",
            &["not WebAssembly", "23 21 2f 62"],
        ),
        (
            "core module",
            wat(r#"(module (func (export "run")))"#),
            422,
            "core_module",
            &["core WebAssembly module, not a component", "wasm32-wasip2"],
        ),
        (
            "other world",
            other_world,
            422,
            "wrong_world",
            &["does not export `spool:handler/hooks@0.2.0`", "`hello`"],
        ),
        (
            "wrong hook types",
            wrong_types,
            422,
            "wrong_world",
            &["function `admit`", "0 parameter(s)", "(job)"],
        ),
        (
            "foreign import",
            foreign_import,
            422,
            "wrong_world",
            &["imports `acme:db/query`", "spool does not provide"],
        ),
        (
            "trapping smoke run",
            ECHO_TRAP.to_vec(),
            422,
            "smoke_failed",
            &[
                "smoke run failed in `admit`",
                "always traps",
                "handler panicked",
                "echo.rs",
            ],
        ),
        (
            "too large",
            vec![0u8; 1024 * 1024 + 1],
            413,
            "too_large",
            &["upload limit"],
        ),
    ];
    for (what, bytes, expected_status, expected_code, phrases) in cases {
        let (status, code, message) = upload(&api, &host, bytes).await;
        assert_eq!(
            (status, code.as_str()),
            (expected_status, expected_code),
            "{what}: {message}"
        );
        for phrase in phrases {
            assert!(
                message.contains(phrase),
                "{what}: `{phrase}` missing from: {message}"
            );
        }
        let status = echo_status(&api, &host).await;
        assert_eq!(
            status["active"],
            v1.as_str(),
            "{what} changed the active version"
        );
        assert_eq!(
            status["versions"].as_array().map(Vec::len),
            Some(1),
            "{what} was stored: {status}"
        );
        println!("rejected {what}: [{code}] {message}");
    }
    assert_eq!(run_one(&api, &host, "echo").await, 1, "v1 still serves");

    // The CLI says the same and fails.
    let (ok, out, err) = cli(vec![
        "deploy".into(),
        fixtures.path("echo_trap.wasm").display().to_string(),
        "--handler".into(),
        "echo".into(),
        "--server".into(),
        host.base.clone(),
    ])
    .await;
    assert!(!ok, "{out}");
    assert!(
        err.contains("deploy rejected")
            && err.contains("smoke_failed")
            && err.contains("the active version keeps serving"),
        "{err}"
    );

    // Nothing to roll back to, an unknown version, a bad name.
    let (status, reply) = api
        .post(&host.url("/admin/handlers/echo/rollback"), &json!({}))
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (409, Some("nothing_to_roll_back")),
        "{reply}"
    );
    let (status, reply) = api
        .post(
            &host.url("/admin/handlers/echo/rollback"),
            &json!({"to": "0123456789ab"}),
        )
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (404, Some("unknown_version")),
        "{reply}"
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&v1),
        "lists the stored versions: {reply}"
    );
    let (status, reply) = api
        .upload(
            &host.url("/admin/handlers/No%20Such/versions"),
            ECHO_V2.to_vec(),
        )
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (422, Some("invalid_handler_name")),
        "{reply}"
    );
    assert_eq!(echo_status(&api, &host).await["active"], v1.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_after_a_deploy_serves_the_active_version_from_the_compiled_cache() {
    let redis = Redis::start();
    let stub = stub().await;
    let fixtures = Fixtures::new();
    let options = HostOptions {
        config: fixtures.config(""),
        ..Default::default()
    };
    let first = Host::start(&redis, &stub, options.clone());
    let api = Api::default();
    let (status, deployed) = api
        .upload(
            &first.url("/admin/handlers/echo/versions?by=test"),
            ECHO_V2.to_vec(),
        )
        .await;
    assert_eq!(status, 201, "{deployed}");
    assert_eq!(
        deployed["compiledFrom"], "compiled",
        "the first instance compiles v2: {deployed}"
    );

    let second = Host::start(&redis, &stub, options);
    let (_, overview) = api.get(&second.url("/admin/handlers")).await;
    let cache = &overview["compileCache"];
    assert_eq!(
        cache["misses"],
        0,
        "the second host compiled something: {overview}\n{}",
        second.log_text()
    );
    assert!(
        cache["hits"].as_u64().unwrap_or(0) >= 3,
        "chat, pipeline and echo v2 come from the cache: {overview}"
    );
    let log = second.log_text();
    assert!(!log.contains("cache miss"), "{log}");
    assert!(
        log.contains("handler version loaded") && log.contains("cache"),
        "{log}"
    );
    assert_eq!(
        run_one(&api, &second, "echo").await,
        2,
        "the new host serves the active version"
    );
    let status = echo_status(&api, &second).await;
    assert_eq!(status["versions"][1]["uploadedBy"], "test", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_queue_keeps_its_version_and_the_periodic_check_heals_a_missed_notification() {
    let redis = Redis::start();
    let stub = stub().await;
    let fixtures = Fixtures::new();
    let (v1, v2) = (version(ECHO_V1), version(ECHO_V2));
    let pinned = format!("[queues.pinned]\nhandler = \"echo\"\nhandler_version = \"{v1}\"\n");
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config: format!("{}\n{pinned}", fixtures.config("")),
            ..Default::default()
        },
    );
    let api = Api::default();
    let (status, reply) = api
        .upload(&host.url("/admin/handlers/echo/versions"), ECHO_V2.to_vec())
        .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(run_one(&api, &host, "echo").await, 2);
    assert_eq!(
        run_one(&api, &host, "pinned").await,
        1,
        "the pinned queue stays on v1"
    );

    // Activate v1 behind the host's back: no Pub/Sub message, only the new
    // generation. The periodic check must notice it.
    let mut connection = redis.connection();
    let _: () = redis::pipe()
        .atomic()
        .hset("spool:handlers:active", "echo", &v1)
        .ignore()
        .incr("spool:handlers:generation", 1)
        .ignore()
        .query(&mut connection)
        .expect("redis");
    let started = Instant::now();
    wait_until(
        "the host switches back to v1 without a notification",
        Duration::from_secs(5),
        || {
            let report: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(format!("spool:instance:{}", instance_id(&mut connection)))
                .query(&mut connection)
                .unwrap_or_default();
            report
                .get("handlers")
                .is_some_and(|h| h.contains(&format!("\"echo\":\"{v1}\"")))
        },
    );
    println!(
        "periodic check healed a missed notification in {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(run_one(&api, &host, "echo").await, 1);
    assert_ne!(v1, v2);
}

fn instance_id(connection: &mut redis::Connection) -> String {
    let instances: Vec<String> = redis::cmd("ZRANGE")
        .arg("spool:instances")
        .arg(0)
        .arg(-1)
        .query(connection)
        .unwrap_or_default();
    instances.into_iter().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_watch_redeploys_the_guest_when_its_file_changes_and_rejects_a_broken_build() {
    let redis = Redis::start();
    let stub = stub().await;
    let fixtures = Fixtures::new();
    let watched = fixtures.path("watched.wasm");
    std::fs::write(&watched, ECHO_V1).expect("write");
    let config = format!(
        "[registry]\ncache_dir = \"{}\"\n\n[queues.echo]\nhandler = \"echo\"\n",
        fixtures.path("compiled").display()
    );
    let extra_args = vec!["--watch".into(), format!("echo={}", watched.display())];
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config,
            extra_args,
            ..Default::default()
        },
    );
    let api = Api::default();
    assert_eq!(
        run_one(&api, &host, "echo").await,
        1,
        "the watched file is deployed at start"
    );

    replace(&watched, ECHO_V2);
    wait_for_active(&api, &host, &version(ECHO_V2)).await;
    assert_eq!(run_one(&api, &host, "echo").await, 2);

    replace(&watched, b"not a component");
    let started = Instant::now();
    while !host.log_text().contains("watched file rejected") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no rejection logged:\n{}",
            host.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(host.log_text().contains("not WebAssembly"));
    assert_eq!(
        echo_status(&api, &host).await["active"],
        version(ECHO_V2).as_str()
    );
    assert_eq!(
        run_one(&api, &host, "echo").await,
        2,
        "the last good version keeps serving"
    );
}

/// Writes a new file and renames it over the old one, as build tools do.
fn replace(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

async fn wait_for_active(api: &Api, host: &Host, version: &str) {
    let started = Instant::now();
    while echo_status(api, host).await["active"] != version {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{version} never became active:\n{}",
            host.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `bytes` (a component) with a custom section `spool-test` holding `tag`
/// appended: the same handler, different bytes, so a new version id.
fn variant(bytes: &[u8], tag: u32) -> Vec<u8> {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"spool-test";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(&tag.to_le_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    leb128(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// The versions of `echo` whose bytes are in Redis.
fn stored_versions(redis: &Redis) -> Vec<String> {
    let mut connection = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("spool:handler:echo:component:*")
        .query(&mut connection)
        .expect("KEYS");
    let mut versions: Vec<String> = keys
        .iter()
        .filter_map(|key| key.rsplit(':').next().map(str::to_owned))
        .collect();
    versions.sort();
    versions
}

/// Names of the compiled artifacts in the cache whose version is `version`.
fn artifacts(fixtures: &Fixtures, version: &str) -> Vec<String> {
    std::fs::read_dir(fixtures.path("compiled"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(version))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_are_pruned_but_the_active_rollback_and_pinned_ones_stay() {
    let redis = Redis::start();
    let stub = stub().await;
    let fixtures = Fixtures::new();
    let v1 = version(ECHO_V1);
    // keep_versions = 2, and queue `pinned` pins the seeded v1.
    let pinned = format!("[queues.pinned]\nhandler = \"echo\"\nhandler_version = \"{v1}\"\n");
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config: format!("{}\n{pinned}", fixtures.config("keep_versions = 2")),
            ..Default::default()
        },
    );
    let api = Api::default();

    // Five more versions (N + 3 with N = 2), each deployed and activated.
    let deployed: Vec<String> = (1..=5).map(|tag| version(&variant(ECHO_V2, tag))).collect();
    for tag in 1..=5 {
        let (status, code, message) = upload(&api, &host, variant(ECHO_V2, tag)).await;
        assert_eq!(status, 201, "[{code}] {message}");
        wait_for_active(&api, &host, &deployed[tag as usize - 1]).await;
    }
    let (active, rollback_target) = (&deployed[4], &deployed[3]);

    // Kept: the newest two (the active one and the rollback target among
    // them) and the pinned v1. Pruned: the three in between, bytes and all.
    let mut expected = vec![v1.clone(), active.clone(), rollback_target.clone()];
    expected.sort();
    assert_eq!(stored_versions(&redis), expected);
    let status = echo_status(&api, &host).await;
    let listed: Vec<&str> = status["versions"]
        .as_array()
        .map(|versions| {
            versions
                .iter()
                .filter_map(|v| v["version"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed.len(), 3, "{status}");
    for pruned in &deployed[..3] {
        assert!(
            !listed.contains(&pruned.as_str()),
            "{pruned} listed: {status}"
        );
        assert!(
            artifacts(&fixtures, pruned).is_empty(),
            "the compiled artifact of pruned {pruned} stays: {:?}",
            artifacts(&fixtures, pruned)
        );
    }
    assert!(
        !artifacts(&fixtures, active).is_empty(),
        "the active one is cached"
    );
    println!(
        "stored after 6 versions with keep_versions = 2: {:?}",
        stored_versions(&redis)
    );

    // Every kept version still works: the active one serves, the pinned
    // queue runs v1, a rollback returns to the one before.
    assert_eq!(run_one(&api, &host, "echo").await, 2);
    assert_eq!(run_one(&api, &host, "pinned").await, 1);
    let (status, reply) = api
        .post(&host.url("/admin/handlers/echo/rollback"), &json!({}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["version"], rollback_target.as_str(), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_upload_leaves_no_compiled_artifact() {
    let redis = Redis::start();
    let stub = stub().await;
    let fixtures = Fixtures::new();
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config: fixtures.config(""),
            ..Default::default()
        },
    );
    let api = Api::default();
    // Both compile, so both were cached before being rejected: one traps in
    // its smoke run, the other exports hooks of the wrong types.
    let wrong_types = wat::parse_str(
        r#"(component
        (core module $m (func (export "f")))
        (core instance $i (instantiate $m))
        (func $f (canon lift (core func $i "f")))
        (instance $hooks
            (export "admit" (func $f)) (export "shape-prompt" (func $f))
            (export "parse-content" (func $f)) (export "handle" (func $f)))
        (export "spool:handler/hooks@0.2.0" (instance $hooks)))"#,
    )
    .expect("valid WAT");
    for (what, bytes, code) in [
        ("trapping smoke run", ECHO_TRAP.to_vec(), "smoke_failed"),
        ("wrong hook types", wrong_types, "wrong_world"),
    ] {
        let rejected = version(&bytes);
        let (status, got, message) = upload(&api, &host, bytes).await;
        assert_eq!((status, got.as_str()), (422, code), "{what}: {message}");
        assert_eq!(
            artifacts(&fixtures, &rejected),
            Vec::<String>::new(),
            "{what}: its compiled artifact stays in the cache"
        );
    }
    // An accepted one is cached, as before.
    let (status, code, message) = upload(&api, &host, ECHO_V2.to_vec()).await;
    assert_eq!(status, 201, "[{code}] {message}");
    assert!(!artifacts(&fixtures, &version(ECHO_V2)).is_empty());
}
