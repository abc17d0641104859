//! Operating spool (issue 15): log formats and the job span, health probes,
//! configuration merged from file, environment and flags.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A chat job whose first model call fails (a 500 from the stub), so its
/// first attempt logs a failure, then completes on the second.
async fn job_with_a_failed_attempt(stack: &Stack) -> String {
    stack
        .stub
        .inject([spool::stub::Fault {
            status: Some(500),
            times: 1,
            ..Default::default()
        }])
        .expect("fault");
    let (status, reply) = stack
        .api
        .post(
            &stack.host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "log me"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let job = stack.api.wait_terminal(&stack.host, &id, WAIT).await;
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_u64()),
        (Some("completed"), Some(2)),
        "{job}"
    );
    id
}

fn retrying_queue() -> String {
    "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 3\nbackoff_ms = 100\n".to_owned()
}

/// The job id a JSON log line carries as a field: its own, its span's or a parent span's.
fn job_fields(line: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut take = |object: &Value| {
        if let Some(job) = object["job"].as_str() {
            found.push(job.to_owned());
        }
    };
    take(&line["fields"]);
    take(&line["span"]);
    for span in line["spans"].as_array().into_iter().flatten() {
        take(span);
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_lines_about_a_job_carry_its_id() {
    let stack = Stack::start(HostOptions {
        config: retrying_queue(),
        extra_args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    })
    .await;
    let id = job_with_a_failed_attempt(&stack).await;
    let log = stack.host.log_text();
    let mut about_the_job = 0;
    let mut failed_attempt = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nlog:\n{log}"));
        assert!(parsed.is_object(), "{line}");
        if line.contains(&id) {
            about_the_job += 1;
            assert!(
                job_fields(&parsed).contains(&id),
                "a line mentioning the job has no job field: {line}"
            );
        }
        if parsed["fields"]["message"] == "job attempt failed" {
            failed_attempt = Some(parsed);
        }
    }
    assert!(about_the_job > 0, "the job is in the log:\n{log}");
    let failed = failed_attempt.unwrap_or_else(|| panic!("no failed attempt logged:\n{log}"));
    let span = &failed["span"];
    assert_eq!(span["job"], id.as_str(), "{failed}");
    assert_eq!(span["queue"], "chat", "{failed}");
    assert!(
        span["handler_version"]
            .as_str()
            .is_some_and(|v| v.len() == 12),
        "the handler version is a span field: {failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_written_to_a_file_have_no_colour_codes_and_name_the_job() {
    let stack = Stack::start(HostOptions {
        config: retrying_queue(),
        ..Default::default()
    })
    .await;
    let id = job_with_a_failed_attempt(&stack).await;
    let log = stack.host.log_text();
    assert!(
        !log.contains('\x1b'),
        "ANSI escape codes in a log file:\n{log}"
    );
    let failed = log
        .lines()
        .find(|l| l.contains("job attempt failed"))
        .unwrap_or_else(|| panic!("no failed attempt logged:\n{log}"));
    assert!(
        failed.contains(&format!("job{{job={id} queue=chat"))
            && failed.contains("handler_version="),
        "the job's span prefixes the line: {failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_needs_redis_and_live_does_not() {
    let mut stack = Stack::start(HostOptions::default()).await;
    let api = &stack.api;
    let (status, live) = api.get(&stack.host.url("/health/live")).await;
    assert_eq!(status, 200, "{live}");
    let (status, ready) = api.get(&stack.host.url("/health/ready")).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["notReady"], json!([]), "{ready}");

    stack.redis.kill();
    let started = Instant::now();
    let (status, ready) = stack.api.get(&stack.host.url("/health/ready")).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["notReady"], json!(["redis"]), "{ready}");
    assert_eq!(ready["redis"], "unavailable", "{ready}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answers promptly"
    );
    let (status, live) = stack.api.get(&stack.host.url("/health/live")).await;
    assert_eq!(status, 200, "the process is alive: {live}");

    stack.redis.kill_and_restart();
    let mut back = false;
    for _ in 0..100 {
        if stack.api.get(&stack.host.url("/health/ready")).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "ready again once Redis is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_the_instance_drains_after_sigterm() {
    let mut stack = Stack::start(HostOptions::default()).await;
    stack.stub.set_timing(3000, 0);
    let (status, reply) = stack
        .api
        .post(
            &stack.host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "slow"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    loop {
        let (_, job) = stack
            .api
            .get(&stack.host.url(&format!("/api/job/{id}")))
            .await;
        if job["state"] == "active" {
            break;
        }
        assert!(started.elapsed() < WAIT, "the job never started: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.host.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, ready) = stack.api.get(&stack.host.url("/health/ready")).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["notReady"], json!(["draining"]), "{ready}");
    assert_eq!(ready["draining"], true, "{ready}");
    let (status, _) = stack.api.get(&stack.host.url("/health/live")).await;
    assert_eq!(status, 200);
    assert_eq!(
        stack.host.wait_exit(Duration::from_secs(20)),
        Some(0),
        "clean exit; log:\n{}",
        stack.host.log_text()
    );
    let mut redis = stack.redis.connection();
    let state: Option<String> = redis::cmd("HGET")
        .arg(format!("spool:job:{id}"))
        .arg("state")
        .query(&mut redis)
        .unwrap_or_default();
    assert_eq!(
        state.as_deref(),
        Some("completed"),
        "the job in flight finished"
    );
}

/// The README's promise end to end: a `[model]` table with just a url, the
/// kind from the environment; the job's model calls use both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_url_from_the_file_and_its_kind_from_the_environment_serve_a_job() {
    let redis = Redis::start();
    let stub = stub().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("spool.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nurl = \"{}\"\n\n[limits]\nrate_per_sec = 1000.0\ncapacity = 1000.0\n",
            stub.url()
        ),
    )
    .expect("write config");
    let spool = Spool::start(
        dir.path(),
        &[],
        &[
            ("SPOOL_CONFIG", config.to_string_lossy().as_ref()),
            ("SPOOL_REDIS_URL", &redis.url()),
            ("SPOOL_MODEL_KIND", "openai"),
        ],
    )
    .await;
    let job = spool.run_chat_job(&Api::default()).await;
    assert_eq!(job["state"], "completed", "{job}");
    let calls = stub.stats().calls;
    assert!(
        calls
            .keys()
            .any(|path| path.contains("/v1/chat/completions")),
        "the OpenAI protocol from SPOOL_MODEL_KIND was used: {calls:?}"
    );
}

/// A `spool serve` started by a test with exactly the flags and environment
/// it gives (no config file of the harness's), killed when dropped.
struct Spool {
    child: std::process::Child,
    base: String,
    log: std::path::PathBuf,
}

impl Spool {
    async fn start(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = dir.join("spool.log");
        let child = Command::new(SPOOL)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn spool");
        let mut spool = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let started = Instant::now();
        loop {
            let ready = reqwest::get(format!("{}/health/ready", spool.base)).await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return spool;
            }
            if let Ok(Some(status)) = spool.child.try_wait() {
                panic!("spool exited ({status}):\n{}", spool.log_text());
            }
            assert!(
                started.elapsed() < WAIT,
                "spool never got ready:\n{}",
                spool.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn run_chat_job(&self, api: &Api) -> Value {
        let (status, reply) = api
            .post(
                &format!("{}/api/chat", self.base),
                &json!({"userId": "u", "prompt": "hi"}),
            )
            .await;
        assert_eq!(status, 202, "{reply}");
        let id = reply["jobId"].as_str().unwrap_or_default().to_owned();
        let started = Instant::now();
        loop {
            let (_, job) = api.get(&format!("{}/api/job/{id}", self.base)).await;
            if job["state"] == "completed" || job["state"] == "failed" {
                return job;
            }
            assert!(started.elapsed() < WAIT, "the job did not finish: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-server that speaks TLS only, with ACL user `spool` (password
/// `secret`) and the default user off, like a managed Redis.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
}

impl TlsRedis {
    /// Makes a CA and a server certificate for 127.0.0.1 in `dir` (openssl CLI).
    fn start(dir: &std::path::Path) -> Self {
        let openssl = |args: &str| {
            let status = Command::new("openssl")
                .args(args.split(' '))
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl must be installed");
            assert!(status.success(), "openssl {args}");
        };
        openssl(
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=spool-test-CA",
        );
        openssl(
            "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        );
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext");
        openssl(
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext",
        );
        let port = free_port();
        let child = Command::new("redis-server")
            .current_dir(dir)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .args(["--user", "default", "off"])
            .args(["--user", "spool", "on", ">secret", "~*", "&*", "+@all"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        wait_until("the TLS port listens", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { child, port }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A managed Redis: `rediss://` with an ACL user and password, the server's
/// CA given in `[redis] ca_file`. A job runs; the password never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_an_acl_user_and_a_private_ca_runs_a_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = TlsRedis::start(dir.path());
    let stub = stub().await;
    let config = dir.path().join("spool.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nca_file = \"{}\"\n\n[model]\nurl = \"{}\"\n",
            dir.path().join("ca.crt").display(),
            stub.url()
        ),
    )
    .expect("config");
    let url = format!("rediss://spool:secret@127.0.0.1:{}", redis.port);
    let config_arg = config.to_string_lossy().into_owned();
    let spool = Spool::start(
        dir.path(),
        &["--config", &config_arg, "--redis-url", &url],
        &[],
    )
    .await;
    let job = spool.run_chat_job(&Api::default()).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert!(
        !spool.log_text().contains("secret"),
        "the password is not logged:\n{}",
        spool.log_text()
    );

    // Without the CA the server's certificate is not trusted: spool refuses
    // to start, says why, and does not print the password either.
    let other = tempfile::tempdir().expect("temp dir");
    let output = Command::new(SPOOL)
        .args(["serve", "--listen", "127.0.0.1:0", "--redis-url", &url])
        .env("SPOOL_MODEL_URL", stub.url())
        .current_dir(other.path())
        .output()
        .expect("spool runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "started without trusting the CA: {stderr}"
    );
    assert!(
        stderr.contains("cannot reach Redis") && stderr.contains("ca_file"),
        "says what failed and which setting fixes it: {stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "the password is not printed: {stderr}"
    );
}

/// Queue totals count every finished job, whether or not a history of them
/// is kept (`[retention] history = 0` used to stop the counting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_totals_count_finished_jobs_without_a_history() {
    let stack = Stack::start(HostOptions {
        config: "[retention]\nhistory = 0\n".into(),
        ..HostOptions::default()
    })
    .await;
    let Stack { host, api, .. } = &stack;
    let (status, accepted) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "ada", "prompt": "count me"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["jobId"].as_str().unwrap_or_default();
    let job = api.wait_terminal(host, id, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");
    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    assert_eq!(stats["queues"]["chat"]["completed"], 1, "{stats}");
    assert_eq!(stats["completed"], 1, "{stats}");
    let (_, history) = api.get(&host.url("/api/queues/chat/history")).await;
    assert_eq!(history["jobs"], json!([]), "no history is kept: {history}");
}
