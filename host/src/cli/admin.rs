//! `spool deploy`, `spool rollback` and `spool handlers`: thin clients of the
//! admin API of any running instance. They show progress of the long steps
//! (upload, then compile + validation on the server), then wait until every
//! live instance has switched and print how long that took.
//!
//! Owns the command-line arguments and output of these commands; all decisions
//! are the server's.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde_json::Value;

/// How long deploy and rollback wait for every instance to switch.
const SWITCH_WAIT: Duration = Duration::from_secs(10);
const UPLOAD_CHUNK: usize = 64 * 1024;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Base URL of any spool instance's API.
    #[arg(long, env = "SPOOL_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Recorded as who made the change [default: $USER@hostname].
    #[arg(long, env = "SPOOL_DEPLOYER")]
    pub by: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The component to deploy (a .wasm built for wasm32-wasip2).
    pub component: PathBuf,
    /// The handler it becomes the active version of.
    #[arg(long)]
    pub handler: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Return once the version is active, without waiting for every instance to switch.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// The handler to roll back.
    pub handler: String,
    /// The version to activate (an id or unique prefix, see `spool handlers NAME`)
    /// [default: the version active before the current one].
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct HandlersArgs {
    /// Show this handler's versions, history and instances; absent: all handlers.
    pub handler: Option<String>,
    /// Base URL of any spool instance's API.
    #[arg(long, env = "SPOOL_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
}

fn client() -> Result<reqwest::Client> {
    super::client(Duration::from_secs(120))
}

fn base(server: &str) -> String {
    server.trim_end_matches('/').to_owned()
}

fn default_by() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// A one-line status that rewrites itself on a terminal and prints nothing
/// in between otherwise.
struct Status {
    tty: bool,
}

impl Status {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn update(&self, text: &str) {
        if self.tty {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
        }
    }

    fn done(&self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        if !text.is_empty() {
            eprintln!("{text}");
        }
    }
}

pub async fn deploy(args: DeployArgs) -> Result<()> {
    let bytes = Bytes::from(
        std::fs::read(&args.component)
            .with_context(|| format!("reading {}", args.component.display()))?,
    );
    let file = args
        .component
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let by = args.server.by.clone().unwrap_or_else(default_by);
    let url = format!(
        "{}/admin/handlers/{}/versions",
        base(&args.server.server),
        args.handler
    );
    let status = Arc::new(Status::new());
    let total = bytes.len();
    eprintln!(
        "deploying {file} ({}) as handler `{}` via {}",
        kib(total),
        args.handler,
        base(&args.server.server)
    );

    // Upload progress: each chunk is counted as the connection takes it.
    let sent = Arc::new(AtomicUsize::new(0));
    let chunks: Vec<Bytes> = (0..total)
        .step_by(UPLOAD_CHUNK)
        .map(|start| bytes.slice(start..(start + UPLOAD_CHUNK).min(total)))
        .collect();
    let (progress, counter) = (status.clone(), sent.clone());
    let body = futures_util::stream::iter(chunks.into_iter().map(move |chunk| {
        let done = counter.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
        progress.update(&format!(
            "  uploading {:>3}% ({} of {})",
            done * 100 / total.max(1),
            kib(done),
            kib(total)
        ));
        Ok::<_, std::io::Error>(chunk)
    }));
    let started = Instant::now();
    let request = client()?
        .post(&url)
        .query(&[("by", by.as_str())])
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .header(reqwest::header::CONTENT_LENGTH, total)
        .body(reqwest::Body::wrap_stream(body));
    let response = with_ticker(&status, started, &sent, total, request.send()).await;
    let response =
        response.with_context(|| format!("cannot reach spool at {}", base(&args.server.server)))?;
    let (code, reply) = read_json(response).await?;
    if !(200..300).contains(&code) {
        status.done("");
        bail!(
            "deploy rejected: {}; the active version keeps serving",
            error_text(&reply)
        );
    }
    status.done(&format!(
        "  uploaded and validated in {} ms: compile {} ms ({}), smoke run {} ms",
        started.elapsed().as_millis(),
        reply["compileMs"],
        if reply["compiledFrom"] == "cache" {
            "from the compiled cache"
        } else {
            "compiled"
        },
        reply["smokeMs"]
    ));
    finish(&args.server.server, &args.handler, &reply, args.no_wait).await
}

/// Awaits `request`, showing upload progress, then how long the server has
/// been compiling and validating.
async fn with_ticker<T>(
    status: &Status,
    started: Instant,
    sent: &AtomicUsize,
    total: usize,
    request: impl Future<Output = T>,
) -> T {
    tokio::pin!(request);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            result = &mut request => return result,
            _ = tick.tick() => {
                if sent.load(Ordering::Relaxed) >= total {
                    status.update(&format!("  uploaded {}; the server is compiling and validating it (world check, smoke run)... {:.1} s", kib(total), started.elapsed().as_secs_f64()));
                }
            }
        }
    }
}

pub async fn rollback(args: RollbackArgs) -> Result<()> {
    let by = args.server.by.clone().unwrap_or_else(default_by);
    let url = format!(
        "{}/admin/handlers/{}/rollback",
        base(&args.server.server),
        args.handler
    );
    let body = serde_json::json!({ "to": args.to, "by": by });
    let status = Status::new();
    status.update(&format!(
        "  rolling back `{}`: loading and checking the target version...",
        args.handler
    ));
    let response = client()?
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("cannot reach spool at {}", base(&args.server.server)))?;
    let (code, reply) = read_json(response).await?;
    status.done("");
    if !(200..300).contains(&code) {
        bail!(
            "rollback refused: {}; the active version keeps serving",
            error_text(&reply)
        );
    }
    finish(&args.server.server, &args.handler, &reply, args.no_wait).await
}

/// Prints the activation, then waits until every live instance runs it.
async fn finish(server: &str, handler: &str, reply: &Value, no_wait: bool) -> Result<()> {
    let version = reply["version"].as_str().unwrap_or_default().to_owned();
    let previous = reply["previous"].as_str().unwrap_or("none");
    if reply["changed"] == Value::Bool(false) {
        println!("handler `{handler}`: version {version} was already active");
    } else {
        println!(
            "handler `{handler}`: version {version} active (was {previous}), generation {}",
            reply["generation"]
        );
    }
    if no_wait {
        return Ok(());
    }
    let activated_at = reply["activatedAt"].as_u64().unwrap_or(0);
    let url = format!("{}/admin/handlers/{handler}", base(server));
    let http = client()?;
    let started = Instant::now();
    loop {
        let (code, status) = read_json(
            http.get(&url)
                .send()
                .await
                .context("reading the switch status")?,
        )
        .await?;
        if code != 200 {
            bail!("cannot read the switch status: {}", error_text(&status));
        }
        if status["active"].as_str() != Some(version.as_str()) {
            bail!(
                "version {version} is no longer active: {} was activated meanwhile",
                status["active"]
            );
        }
        let instances = status["instances"].as_array().cloned().unwrap_or_default();
        let switched: Vec<&Value> = instances
            .iter()
            .filter(|i| i["switched"] == Value::Bool(true))
            .collect();
        if !instances.is_empty() && switched.len() == instances.len() {
            let last = switched
                .iter()
                .filter_map(|i| i["switchedAt"].as_u64())
                .max()
                .unwrap_or(activated_at);
            println!(
                "switched on {}/{} instances in {} ms (deploy accepted -> last instance switched)",
                switched.len(),
                instances.len(),
                last.saturating_sub(activated_at)
            );
            return Ok(());
        }
        if started.elapsed() > SWITCH_WAIT {
            let lagging: Vec<String> = instances
                .iter()
                .filter(|i| i["switched"] != Value::Bool(true))
                .map(|i| format!("{} (runs {})", i["instance"], i["version"]))
                .collect();
            bail!(
                "after {SWITCH_WAIT:?}, {} of {} instances have not switched: {}",
                lagging.len(),
                instances.len(),
                lagging.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn list(args: HandlersArgs) -> Result<()> {
    let http = client()?;
    let url = match &args.handler {
        Some(name) => format!("{}/admin/handlers/{name}", base(&args.server)),
        None => format!("{}/admin/handlers", base(&args.server)),
    };
    let (code, reply) = read_json(
        http.get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach spool at {}", base(&args.server)))?,
    )
    .await?;
    if code != 200 {
        bail!("{}", error_text(&reply));
    }
    let rows = |key: &str| reply[key].as_array().cloned().unwrap_or_default();
    if args.handler.is_none() {
        println!("{:<24} ACTIVE", "HANDLER");
        for handler in rows("handlers") {
            println!(
                "{:<24} {}",
                text(&handler["name"]),
                text(&handler["active"])
            );
        }
        println!(
            "\n{} live instance(s), registry generation {}",
            rows("instances").len(),
            reply["generation"]
        );
        return Ok(());
    }
    println!(
        "{:<14} {:<7} {:>9}  {:<14} UPLOADED BY",
        "VERSION", "ACTIVE", "BYTES", "UPLOADED (ms)"
    );
    for version in rows("versions") {
        let active = if version["active"] == Value::Bool(true) {
            "*"
        } else {
            ""
        };
        println!(
            "{:<14} {:<7} {:>9}  {:<14} {}",
            text(&version["version"]),
            active,
            version["size"],
            version["uploadedAt"],
            text(&version["uploadedBy"])
        );
    }
    println!("\nINSTANCE                          VERSION        SWITCHED");
    for instance in rows("instances") {
        println!(
            "{:<33} {:<14} {}",
            text(&instance["instance"]),
            text(&instance["version"]),
            instance["switched"]
        );
    }
    println!("\nRECENT ACTIVATIONS (newest first)");
    for activation in rows("history") {
        println!(
            "  {} {} -> {} by {}",
            text(&activation["action"]),
            text(&activation["previous"]),
            text(&activation["version"]),
            text(&activation["by"])
        );
    }
    Ok(())
}

async fn read_json(response: reqwest::Response) -> Result<(u16, Value)> {
    let code = response.status().as_u16();
    let text = response
        .text()
        .await
        .context("reading the server's answer")?;
    Ok((
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn error_text(reply: &Value) -> String {
    match (
        reply["error"]["code"].as_str(),
        reply["error"]["message"].as_str(),
    ) {
        (Some(code), Some(message)) => format!("{message} [{code}]"),
        _ => reply.to_string(),
    }
}

fn text(value: &Value) -> String {
    value.as_str().map(str::to_owned).unwrap_or_else(|| {
        if value.is_null() {
            "-".into()
        } else {
            value.to_string()
        }
    })
}

fn kib(bytes: usize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}
