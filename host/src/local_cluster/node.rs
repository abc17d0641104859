//! One redis-server of a local cluster: its ports, its process and its
//! directory, and the plain connections that talk to it. It knows nothing of
//! the cluster's shape; `local_cluster` forms and operates the cluster.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::NODE_TIMEOUT;

/// A node listens on `port` and on `port + BUS_OFFSET` (the cluster bus).
const BUS_OFFSET: u16 = 10000;
/// Node ports, below Linux's ephemeral range (32768 and up) with their bus
/// ports too, so that neither collides with the ports the kernel hands out for
/// outgoing connections or `--port 0` servers; and no node's port can be
/// another's bus port.
const NODE_PORTS: RangeInclusive<u16> = 10000..=19999;

const IO_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const POLL: Duration = Duration::from_millis(25);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Redis's `appendfsync`; AOF is always on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendFsync {
    Always,
    Everysec,
}

impl AppendFsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Everysec => "everysec",
        }
    }
}

impl FromStr for AppendFsync {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "always" => Ok(Self::Always),
            "everysec" => Ok(Self::Everysec),
            other => bail!("appendfsync must be \"always\" or \"everysec\", not {other:?}"),
        }
    }
}

/// A port was taken between our check and redis-server's bind: worth a retry
/// on other ports.
#[derive(Debug)]
pub(super) struct PortTaken(SocketAddr);

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} or its bus port was taken by another process", self.0)
    }
}

impl std::error::Error for PortTaken {}

pub(super) struct Node {
    pub(super) addr: SocketAddr,
    pub(super) dir: PathBuf,
    pub(super) process: Option<Child>,
}

impl Node {
    pub(super) fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    pub(super) fn spawn(&mut self, fsync: AppendFsync) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args([
                "--cluster-node-timeout",
                &NODE_TIMEOUT.as_millis().to_string(),
            ])
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", fsync.as_str()])
            // Redis 7 waits 5 s for more replicas before a diskless full sync.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install -y redis-server)")?;
        self.process = Some(child);
        Ok(())
    }

    /// Waits until the node answers PING; tells a lost bind race apart.
    pub(super) fn wait_answers(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if ping(self.addr).is_ok() {
                return Ok(());
            }
            let exited = match self.process.as_mut() {
                Some(child) => child.try_wait().context("checking on redis-server")?,
                None => bail!("node {} is not running", self.addr),
            };
            if let Some(status) = exited {
                self.process = None;
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                if log.contains("Address already in use") {
                    return Err(PortTaken(self.addr).into());
                }
                bail!(
                    "node {} exited ({status}) before answering; see its log {}",
                    self.addr,
                    self.log().display()
                );
            }
            if started.elapsed() > ANSWER_TIMEOUT {
                bail!(
                    "node {} did not answer PING within {ANSWER_TIMEOUT:?}; see its log {}",
                    self.addr,
                    self.log().display()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaped.
    pub(super) fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `count` ports whose bus ports are free too, from a random start so that
/// clusters started at once rarely race for the same ones.
pub(super) fn free_node_ports(count: usize) -> Result<Vec<u16>> {
    let span = NODE_PORTS.end() - NODE_PORTS.start() + 1;
    let offset = fastrand::u16(..span);
    let ports: Vec<u16> = (0..span)
        .map(|i| NODE_PORTS.start() + (offset + i) % span)
        .filter(|&port| bindable(port) && bindable(port + BUS_OFFSET))
        .take(count)
        .collect();
    if ports.len() < count {
        bail!("only {} free port pairs in {NODE_PORTS:?}", ports.len());
    }
    Ok(ports)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

pub(super) fn node_url(addr: SocketAddr) -> String {
    format!("redis://{addr}/")
}

pub(super) fn connect(addr: SocketAddr) -> Result<redis::Connection> {
    let connection = redis::Client::open(node_url(addr))
        .and_then(|client| client.get_connection_with_timeout(IO_TIMEOUT))
        .with_context(|| format!("connecting to {addr}"))?;
    connection.set_read_timeout(Some(IO_TIMEOUT))?;
    connection.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(connection)
}

pub(super) fn run(addr: SocketAddr, what: &str, command: &redis::Cmd) -> Result<()> {
    command
        .query::<()>(&mut connect(addr)?)
        .with_context(|| format!("{what} on {addr}"))
}

fn ping(addr: SocketAddr) -> Result<()> {
    let _: String = redis::cmd("PING").query(&mut connect(addr)?)?;
    Ok(())
}

pub(super) fn my_id(addr: SocketAddr) -> Result<String> {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut connect(addr)?)
        .with_context(|| format!("CLUSTER MYID on {addr}"))
}

/// One `field:value` line of an INFO-style reply.
pub(super) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The retry of a whole start hangs on telling this case apart; redis
    /// binds the bus port last, so that is the one taken here.
    #[test]
    fn a_taken_bus_port_is_told_apart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_node_ports(1).expect("a free port pair")[0];
        let _taken = TcpListener::bind((Ipv4Addr::LOCALHOST, port + BUS_OFFSET)).expect("bind");
        let mut node = Node {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir: dir.path().to_owned(),
            process: None,
        };
        node.spawn(AppendFsync::Everysec).expect("spawn");
        let error = node.wait_answers().expect_err("the bus port is taken");
        node.kill();
        assert!(error.is::<PortTaken>(), "{error:#}");
    }
}
