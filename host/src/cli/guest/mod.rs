//! `spool guest`: tools for handler authors. `test` runs one hook of a
//! component against a fixture (no Redis, no model server) and prints the
//! report as JSON; `new` scaffolds a handler crate that builds and passes its
//! test out of the box.
//!
//! A thin CLI: the engine is [`spool_runtime::guest_test`], the fixture and
//! report formats are `spool_fixture`'s (which `spool-harness` speaks over
//! stdin and stdout), the template is in [`scaffold`]. Touches only the files
//! it is pointed at.

mod scaffold;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use spool_core::config::SandboxConfig;
use spool_fixture::{Fixture, HookName, ScriptedReply};
use spool_runtime::Runtime;

#[derive(Args)]
pub struct GuestArgs {
    #[command(subcommand)]
    command: GuestCommand,
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Run a hook of a component against a fixture and print what it did as
    /// JSON on stdout. Exit code 0: the fixture's expectations held (or,
    /// without any, the hook returned normally); 1: a check did not hold (the
    /// report says which), or the test could not run (an unreadable fixture
    /// or component, say: then stdout is empty and stderr says why).
    Test(TestArgs),
    /// Create a new handler crate: all hooks implemented, one harness test,
    /// and a fixture for `spool guest test`.
    New(NewArgs),
}

#[derive(Args)]
struct TestArgs {
    /// The handler component (.wasm), e.g. target/wasm32-wasip2/release/demo.wasm.
    component: PathBuf,
    /// Fixture file (JSON): hook, job, history, text, replies, state, expect;
    /// `-` reads it from stdin.
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Run this hook instead of the fixture's (admit, shape_prompt, parse_content, handle).
    #[arg(long, value_parser = parse_hook)]
    hook: Option<HookName>,
    /// The job payload as JSON, replacing the fixture's.
    #[arg(long)]
    payload: Option<String>,
    /// A scripted model reply text, appended to the fixture's replies (repeatable).
    #[arg(long = "reply")]
    replies: Vec<String>,
    /// Wall-clock limit of the call, in ms [default: the host default, 120000].
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Memory cap of the guest, in MiB [default: 64].
    #[arg(long)]
    memory_mb: Option<usize>,
    /// Model calls the guest may make [default: 64].
    #[arg(long)]
    max_model_calls: Option<u32>,
}

#[derive(Args)]
struct NewArgs {
    /// Crate name: lowercase letters, digits, '-' or '_', starting with a letter.
    name: String,
    /// Directory to create [default: ./<name>].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The spool checkout whose harness crate the new handler's test uses
    /// [default: the checkout this binary was built from].
    #[arg(long)]
    spool_path: Option<PathBuf>,
}

fn parse_hook(text: &str) -> Result<HookName, String> {
    serde_json::from_value(serde_json::Value::String(text.replace('-', "_"))).map_err(|_| {
        format!("unknown hook `{text}`: use admit, shape_prompt, parse_content or handle")
    })
}

pub async fn run(args: GuestArgs) -> Result<()> {
    match args.command {
        GuestCommand::Test(args) => test(args).await,
        GuestCommand::New(args) => {
            let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
            let spool_path = match args.spool_path {
                Some(path) => path,
                None => default_spool_path(),
            };
            scaffold::create(&args.name, &dir, &spool_path)?;
            println!("created handler `{}` in {}", args.name, dir.display());
            println!("next: cd {} && cargo test", dir.display());
            Ok(())
        }
    }
}

/// The checkout this binary was built from (host/ is one level below it).
fn default_spool_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn test(args: TestArgs) -> Result<()> {
    let mut fixture = match &args.fixture {
        Some(path) => read_fixture(path)?,
        None => Fixture::default(),
    };
    if let Some(hook) = args.hook {
        fixture.hook = hook;
    }
    if let Some(payload) = &args.payload {
        fixture.job.payload = serde_json::from_str(payload).context("--payload is not JSON")?;
    }
    fixture
        .replies
        .extend(args.replies.into_iter().map(ScriptedReply::text));

    let mut limits = SandboxConfig::default().limits();
    limits.max_instances = 2;
    if let Some(ms) = args.deadline_ms {
        limits.deadline = std::time::Duration::from_millis(ms);
    }
    if let Some(mb) = args.memory_mb {
        limits.memory_bytes = mb << 20;
    }
    if let Some(calls) = args.max_model_calls {
        limits.max_model_calls = calls;
    }
    let runtime = Runtime::new(limits)?;
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading component {}", args.component.display()))?;
    let name = args
        .component
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("handler")
        .to_owned();
    let handler = runtime.load(&name, &bytes)?;
    let report = spool_runtime::guest_test::run(&runtime, &handler, &fixture).await;
    // Printed whatever the verdict: the report is how a failure is explained.
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.pass {
        let failed = report.checks.iter().filter(|c| !c.pass).count();
        bail!(
            "guest test failed: {failed} of {} checks did not hold",
            report.checks.len()
        );
    }
    Ok(())
}

/// The fixture at `path`, or on stdin for `-`.
fn read_fixture(path: &Path) -> Result<Fixture> {
    let (name, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the fixture from stdin")?;
        ("on stdin".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading fixture {}", path.display()))?;
        (path.display().to_string(), text)
    };
    serde_json::from_str(&text).with_context(|| format!("the fixture {name} is not valid"))
}
