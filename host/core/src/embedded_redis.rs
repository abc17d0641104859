//! The embedded default: a `redis-server` that spool starts in its data directory,
//! waits for, and stops last on shutdown. Owns that child process only; what is
//! stored in Redis is the queue's and the store's business.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::config::Fsync;

/// How long redis-server may take to answer at all. Loading its AOF does not
/// count: a large file takes longer (~50 MB/s measured here), and a server
/// that answers LOADING is alive and getting there.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct EmbeddedRedis {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl EmbeddedRedis {
    /// Starts redis-server with AOF on, listening only on a unix socket in `dir`.
    pub async fn start(dir: &Path, fsync: Fsync) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the Redis data directory {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let socket = dir.join("redis.sock");
        let url = format!("redis+unix://{}", socket.display());
        stop_leftover_server(&url).await;

        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--dir")
            .arg(&dir)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("yes")
            .arg("--appendfsync")
            .arg(match fsync {
                Fsync::Everysec => "everysec",
                Fsync::Always => "always",
            })
            // Every job has an event stream of its own, most of them short: a
            // stream's first node preallocates min(this, 4 KB), which made a
            // queued job's one `task_queued` event cost ~4.7 KB of the ~4.8 KB
            // a queued job took. Measured on Redis 7.0, a one-entry stream
            // takes 4,350 B at 4 KB nodes, 1,280 at 1 KB, 768 at 512 B and
            // 512 at 256 B; a long stream's entries 27 B at 1 KB nodes, 29 at
            // 512 B and 34 at 256 B. 256 B nodes cost a job's stream a new
            // node at its second event, which cost ~10 % of the no-op
            // throughput in `spool bench-compare`; 512 B nodes hold a job's
            // usual events in one. (An operator's own Redis keeps its
            // setting; the README says so.)
            .arg("--stream-node-max-bytes")
            .arg("512")
            // Redis rewrites its AOF each time the file doubles, from 64 MB
            // by default: under load (~2.8 KB of AOF per job, 13 MB/s at
            // 4,700 jobs/s) that is every few seconds, and each rewrite's
            // child takes a core for up to a second: in `spool
            // bench-compare`'s paced run a rewrite put the p99 wait at
            // 140-250 ms against 3-11 ms without. From 512 MB a loaded
            // instance rewrites about every 40 s; the price is a longer
            // load at a restart (~10 s for a full 512 MB, measured ~50 MB/s).
            .arg("--auto-aof-rewrite-min-size")
            .arg("512mb")
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C in the terminal must reach spool
            // only, so that spool can drain its jobs before stopping Redis.
            .process_group(0)
            .kill_on_drop(true);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "redis-server is not installed. Install it (Debian/Ubuntu: `sudo apt-get install -y redis-server`, macOS: `brew install redis`) or point spool at a server with --redis-url"
            ),
            Err(e) => return Err(e).context("starting redis-server"),
        };
        let mut server = Self { child, dir, url };
        server.wait_until_ready().await?;
        Ok(server)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_until_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let client = redis::Client::open(self.url.as_str())?;
        let mut loading = false;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "redis-server exited at start ({status}); its log says:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                match redis::cmd("PING").query_async::<String>(&mut conn).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.code() == Some("LOADING") && !loading => {
                        tracing::info!("the embedded redis-server is loading its data");
                        loading = true;
                    }
                    Err(_) => {}
                }
            }
            if !loading && started.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "redis-server did not answer within {STARTUP_TIMEOUT:?}; its log says:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the server to flush its AOF and exit; kills it if it will not.
    pub async fn stop(mut self) {
        if let Ok(client) = redis::Client::open(self.url.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            // SHUTDOWN closes the connection instead of answering.
            let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(_) => tracing::info!("embedded redis-server stopped"),
            Err(_) => {
                tracing::warn!("embedded redis-server did not stop within 10 s; killing it");
                let _ = self.child.kill().await;
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(10).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// A spool that was killed leaves its redis-server running on the socket; stop it
/// cleanly (it flushes its AOF) so the new one can take over the directory.
async fn stop_leftover_server(url: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    tracing::warn!(
        "a redis-server from an earlier run still owns the data directory; shutting it down"
    );
    let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && client.get_multiplexed_async_connection().await.is_ok() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
