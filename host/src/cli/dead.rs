//! `spool dead ...`: the dead-letter queue from the command line, over a running
//! instance's HTTP API (any instance: all state is in Redis).

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct DeadArgs {
    /// Base URL of a running spool instance [default: http://127.0.0.1:8080]. The same
    /// name as `spool deploy`, `handlers` and `keys` use; `--url` and SPOOL_URL still work.
    #[arg(long, alias = "url", global = true, env = "SPOOL_SERVER")]
    server: Option<String>,
    #[command(subcommand)]
    action: DeadAction,
}

#[derive(Subcommand, Debug)]
enum DeadAction {
    /// List a queue's dead jobs, newest first.
    List {
        queue: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one job with its attempt history.
    Show { job: String },
    /// Queue a dead job again, with a fresh set of attempts.
    Replay { queue: String, job: String },
    /// Remove one dead job (with a job id) or all of a queue's.
    Purge { queue: String, job: Option<String> },
}

pub async fn run(args: DeadArgs) -> Result<()> {
    // SPOOL_URL was this command's variable before it took the common name.
    let server = args
        .server
        .or_else(|| {
            std::env::var("SPOOL_URL")
                .ok()
                .filter(|url| !url.is_empty())
        })
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let base = server.trim_end_matches('/');
    let client = super::client(std::time::Duration::from_secs(60))?;
    let request = match &args.action {
        DeadAction::List { queue, limit } => {
            client.get(format!("{base}/api/queues/{queue}/dead?limit={limit}"))
        }
        DeadAction::Show { job } => client.get(format!("{base}/api/job/{job}")),
        DeadAction::Replay { queue, job } => {
            client.post(format!("{base}/api/queues/{queue}/dead/{job}/replay"))
        }
        DeadAction::Purge {
            queue,
            job: Some(job),
        } => client.delete(format!("{base}/api/queues/{queue}/dead/{job}")),
        DeadAction::Purge { queue, job: None } => {
            client.delete(format!("{base}/api/queues/{queue}/dead"))
        }
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => bail!(
            "cannot reach spool at {base} ({error}); is `spool serve` running? Pass --server or set SPOOL_SERVER"
        ),
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        bail!("{status}: {message}");
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}
