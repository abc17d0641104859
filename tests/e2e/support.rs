#![allow(dead_code)] // Shared by all test modules; not each uses every helper.
//! Test harness: real processes on loopback. A `redis-server` per test in its own
//! temp dir (unix socket, AOF on), the stub model server in-process, and `spool
//! serve` processes built by cargo. Everything is killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use spool::stub::{StubArgs, StubServer};

pub const SPOOL: &str = env!("CARGO_BIN_EXE_spool");

/// A redis-server owned by one test.
pub struct Redis {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    fsync: &'static str,
    /// `requirepass`: then it listens on loopback TCP (`port`) and `url()`
    /// is `redis://:{password}@127.0.0.1:{port}/`, the form users write.
    password: Option<(String, u16)>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with_fsync("everysec")
    }

    pub fn start_with_fsync(fsync: &'static str) -> Self {
        let mut redis = Self::unstarted(fsync, None);
        redis.spawn();
        redis
    }

    /// A server that requires `password`, not started yet: `url()` is
    /// known, `spawn()` starts it (tests of a host that starts first).
    pub fn unstarted_with_password(password: &str) -> Self {
        Self::unstarted("everysec", Some((password.to_owned(), free_port())))
    }

    fn unstarted(fsync: &'static str, password: Option<(String, u16)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("spool-redis-")
            .tempdir()
            .expect("temp dir");
        Self {
            dir,
            child: None,
            fsync,
            password,
        }
    }

    pub fn spawn(&mut self) {
        let child = self.launch();
        self.child = Some(child);
    }

    /// Starts the server and waits until it answers; the caller keeps the
    /// process (see `adopt`). Takes `&self`, so a host may be started
    /// against `url()` meanwhile.
    pub fn launch(&self) -> Child {
        let dir = self.dir.path();
        let mut command = Command::new("redis-server");
        match &self.password {
            Some((password, port)) => command
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--requirepass", password]),
            None => command.args(["--port", "0"]),
        };
        let child = command
            .arg("--unixsocket")
            .arg(dir.join("redis.sock"))
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--logfile",
            ])
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        let client = redis::Client::open(self.url()).expect("redis url");
        wait_until("redis-server answers PING", Duration::from_secs(10), || {
            client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
        child
    }

    /// Takes over a process `launch` started: killed with this `Redis`.
    pub fn adopt(&mut self, child: Child) {
        self.kill();
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        if let Some((password, port)) = &self.password {
            return format!("redis://:{password}@127.0.0.1:{port}/");
        }
        format!(
            "redis+unix://{}",
            self.dir.path().join("redis.sock").display()
        )
    }

    /// `INFO memory`'s `used_memory`, in bytes.
    pub fn used_memory(&self) -> u64 {
        self.memory_info("used_memory")
    }

    /// One numeric field of `INFO memory`, e.g. `used_memory_dataset`.
    pub fn memory_info(&self, field: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query(&mut self.connection())
            .expect("INFO memory");
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in INFO memory"))
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// Cuts off every Pub/Sub subscriber; returns how many there were.
    pub fn kill_pubsub_clients(&self) -> u64 {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut self.connection())
            .expect("CLIENT KILL")
    }

    /// Holds every command that may write (scripts included) for `ms`: what
    /// clients send meanwhile piles up behind it.
    pub fn pause_writes(&self, ms: u64) {
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("WRITE")
            .query::<()>(&mut self.connection())
            .expect("CLIENT PAUSE");
    }

    /// Calls of `command` so far (INFO commandstats).
    pub fn command_calls(&self, command: &str) -> u64 {
        command_calls(&mut self.connection(), command)
    }

    /// SIGKILL, then start again on the same directory (AOF replay).
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The stub model server, in this test's process.
pub async fn stub() -> StubServer {
    spool::stub::start(&StubArgs {
        listen: "127.0.0.1:0".parse().expect("addr"),
        latency_ms: 0,
        chunk_delay_ms: 0,
    })
    .await
    .expect("stub model server starts")
}

/// The usual test set-up: a redis-server of its own, the stub model, one
/// `spool serve` on both, and an API client. Fields drop host first, so the
/// host never outlives its Redis. Borrow the parts a test needs:
/// `let Stack { host, api, .. } = &stack;`.
pub struct Stack {
    pub host: Host,
    pub api: Api,
    pub stub: StubServer,
    pub redis: Redis,
}

impl Stack {
    pub async fn start(options: HostOptions) -> Self {
        let redis = Redis::start();
        let stub = stub().await;
        let host = Host::start(&redis, &stub, options);
        Self {
            host,
            api: Api::default(),
            stub,
            redis,
        }
    }
}

/// One `spool serve` process.
pub struct Host {
    pub base: String,
    child: Child,
    pub log: PathBuf,
    _config_dir: tempfile::TempDir,
}

#[derive(Clone)]
pub struct HostOptions {
    pub concurrency: usize,
    /// Extra TOML for the generated config file (top-level keys, then tables;
    /// not [workers] or [model], which the harness writes).
    pub config: String,
    pub extra_args: Vec<String>,
    /// Extra lines for the [workers] table, e.g. "visibility_timeout_ms = 1500".
    pub workers: String,
    /// Extra environment variables of the process.
    pub env: Vec<(String, String)>,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            concurrency: 3,
            config: String::new(),
            extra_args: Vec::new(),
            workers: String::new(),
            env: Vec::new(),
        }
    }
}

impl Host {
    pub fn start(redis: &Redis, stub: &StubServer, options: HostOptions) -> Self {
        Self::start_at(&redis.url(), stub, options)
    }

    /// A host on the Redis (or Redis Cluster) at `redis_url`.
    pub fn start_at(redis_url: &str, stub: &StubServer, options: HostOptions) -> Self {
        let config_dir = tempfile::Builder::new()
            .prefix("spool-host-")
            .tempdir()
            .expect("temp dir");
        let config_path = config_dir.path().join("spool.toml");
        // Tests about other things run unpaced and without in-call retries (a
        // failed model call fails its attempt), unless they bring a [limits] table.
        let limits = if options.config.contains("[limits]") {
            ""
        } else {
            "\n[limits]\nrate_per_sec = 100000.0\ncapacity = 100000.0\nmax_call_attempts = 1\n"
        };
        // Tests poll fast, unless they set their own.
        let idle_poll = if options.workers.contains("idle_poll_ms") {
            ""
        } else {
            "idle_poll_ms = 200\n"
        };
        let config = format!(
            // The test's own TOML first: its top-level keys must precede any table.
            "{}{limits}\n[workers]\nconcurrency = {}\n{idle_poll}{}\n\n[model]\nkind = \"ollama\"\nurl = \"{}\"\nchat_model = \"stub-chat\"\nembed_model = \"stub-embed\"\nrequest_timeout_ms = 10000\n",
            options.config,
            options.concurrency,
            options.workers,
            stub.url()
        );
        std::fs::write(&config_path, config).expect("write config");
        let port = free_port();
        let log = config_dir.path().join("spool.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(SPOOL)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--redis-url")
            .arg(redis_url)
            .args(&options.extra_args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn spool");
        let host = Self {
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
            _config_dir: config_dir,
        };
        host.wait_healthy();
        host
    }

    fn wait_healthy(&self) {
        let url = format!("{}/health", self.base);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(response) = blocking_get(&url)
                && response.0 == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("spool did not become healthy; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; returns its exit status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.0 GET over std's TcpStream: usable before and outside any runtime.
fn blocking_get(url: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("http only")?;
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(authority).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A small JSON-over-HTTP client for tests. By default it presents the
/// operator's admin token (the file every local `spool serve` shares), as
/// the CLI does; [`Api::with_key`] presents another key or none.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
}

/// The operator's admin token, created if no host has yet.
pub fn admin_token() -> String {
    spool::admin_token::load_or_create(None).expect("the admin token")
}

impl Default for Api {
    fn default() -> Self {
        Self::with_key(Some(&admin_token()))
    }
}

impl Api {
    pub fn with_key(key: Option<&str>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = key {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {key}").parse().expect("header"),
            );
        }
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()
                .expect("client"),
        }
    }

    pub async fn post(&self, url: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// A JSON POST with an `Idempotency-Key` header.
    pub async fn post_keyed(&self, url: &str, key: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body.to_string()),
        )
        .await
    }

    /// Uploads a component, as `spool deploy` does.
    pub async fn upload(&self, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.send(
            self.http
                .post(url)
                .header("content-type", "application/wasm")
                .body(body),
        )
        .await
    }

    pub async fn post_raw(&self, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.send(
            self.http
                .post(url)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn send_delete(&self, url: &str) -> (u16, Value) {
        self.send(self.http.delete(url)).await
    }

    pub async fn put(&self, url: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .put(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn get(&self, url: &str) -> (u16, Value) {
        self.send(self.http.get(url)).await
    }

    pub async fn delete(&self, url: &str) -> (u16, Value) {
        self.send(self.http.delete(url)).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request reaches spool");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Polls GET /api/job/{id} until the job is completed or failed.
    pub async fn wait_terminal(&self, host: &Host, id: &str, timeout: Duration) -> Value {
        self.wait_states(host, id, timeout, &["completed", "failed"])
            .await
    }

    pub async fn wait_terminal_or_cancelled(
        &self,
        host: &Host,
        id: &str,
        timeout: Duration,
    ) -> Value {
        self.wait_states(host, id, timeout, &["completed", "failed", "cancelled"])
            .await
    }

    async fn wait_states(
        &self,
        host: &Host,
        id: &str,
        timeout: Duration,
        states: &[&str],
    ) -> Value {
        let started = Instant::now();
        loop {
            let (status, job) = self.get(&host.url(&format!("/api/job/{id}"))).await;
            if status == 200 && job["state"].as_str().is_some_and(|s| states.contains(&s)) {
                return job;
            }
            assert!(
                started.elapsed() < timeout,
                "job {id} not finished after {timeout:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Reads a whole SSE response into (id, event, data) triples until it closes.
pub async fn read_sse(
    url: &str,
    last_event_id: Option<&str>,
    timeout: Duration,
) -> Vec<(Option<String>, String, Value)> {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let body = tokio::time::timeout(timeout, async {
        request
            .send()
            .await
            .expect("sse request")
            .text()
            .await
            .expect("sse body")
    })
    .await
    .expect("SSE stream ends by itself");
    parse_sse(&body)
}

pub fn parse_sse(body: &str) -> Vec<(Option<String>, String, Value)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let (mut id, mut event, mut data) = (None, None, String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            Some((
                id,
                event?,
                serde_json::from_str(&data).unwrap_or(Value::Null),
            ))
        })
        .collect()
}

/// The chat guest's answer for a prompt with `history_len` earlier turns kept:
/// the stub echoes the last user message and counts system + history + prompt.
pub fn expected_chat_response(prompt: &str, history_len: usize) -> String {
    format!(
        "[stub-chat] {} messages; you said: {prompt}",
        history_len + 2
    )
}

/// A built-in handler component (`spool::BUILT_IN`), by name.
pub fn built_in(name: &str) -> &'static [u8] {
    spool::BUILT_IN
        .iter()
        .find(|(built_in, _)| *built_in == name)
        .map(|(_, bytes)| *bytes)
        .unwrap_or_else(|| panic!("{name} is built in"))
}

/// A harness running a built-in handler with the `spool` binary under test.
pub fn built_in_harness(name: &str) -> spool_harness::Harness {
    spool_harness::Harness::from_bytes(name, built_in(name))
        .expect("the component is written")
        .spool_bin(SPOOL)
}

/// The entries of an event stream (a job's `job_events:{id}` or a message's),
/// oldest first, as (event_type, data JSON).
pub fn stream_events(connection: &mut redis::Connection, key: &str) -> Vec<(String, Value)> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(connection)
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(_, fields)| {
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let data = serde_json::from_str(&field("data")).unwrap_or(Value::Null);
            (field("event_type"), data)
        })
        .collect()
}

/// The sum of the samples of `name` (a counter, or a histogram's `_count`)
/// whose labels include all of `labels`, from `GET /metrics` (0 when the
/// series does not exist yet).
pub async fn counter(host: &Host, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::Client::new()
        .get(host.url("/metrics"))
        .bearer_auth(admin_token())
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once("} "))
        .filter(|(sample_labels, _)| {
            labels
                .iter()
                .all(|(key, value)| sample_labels.contains(&format!("{key}=\"{value}\"")))
        })
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// Calls of `command` the server behind `redis` has run (INFO commandstats).
pub fn command_calls(redis: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(redis)
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("calls is a number"))
}
