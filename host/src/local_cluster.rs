//! A real Redis Cluster on loopback, for tests and benchmarks: redis-server
//! processes, each in its own directory under one temporary directory, formed
//! with `redis-cli --cluster create` as an operator would, or by hand (slots,
//! MEET, REPLICATE) below the 3 masters that tool insists on. It also injects
//! failures: SIGKILL a master, wait for its replica's promotion, bring the
//! killed node back.
//!
//! It owns only the processes it started and their directory, both gone when
//! the [`LocalCluster`] is dropped; it never talks to a server it did not start.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

mod node;
mod nodes_view;

pub use node::AppendFsync;
use node::{Node, POLL, PortTaken, connect, free_node_ports, info_field, my_id, node_url, run};
pub use nodes_view::{ClusterView, NodeLine};

/// Hash slots in every Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long a node may stay silent before its peers flag it as failing.
/// A failover then takes about this long, plus the gossip that turns the flag
/// into a majority verdict and the replica's election delay (0.5–1 s): about
/// 4 s measured here. 1000 ms would be faster, but a node stalled for a second (a
/// fork for a replica's sync, an `appendfsync always` fsync, a cargo build on
/// the same 2 cores) would then be failed over spuriously; 2000 ms doubles
/// that margin.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// Whole starts tried when a port is taken between our check and the bind.
const START_ATTEMPTS: usize = 3;

const GOSSIP_TIMEOUT: Duration = Duration::from_secs(15);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The shape of a cluster to start.
#[derive(Clone, Copy, Debug)]
pub struct ClusterOptions {
    /// At least 1. A failover needs a majority of masters to agree, so only
    /// clusters of 3 or more masters survive losing one.
    pub masters: usize,
    pub replicas_per_master: usize,
    pub appendfsync: AppendFsync,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas_per_master: 1,
            appendfsync: AppendFsync::Everysec,
        }
    }
}

/// A master as a live node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master {
    pub addr: SocketAddr,
    pub id: String,
    pub slots: Vec<RangeInclusive<u16>>,
}

/// What `kill_master` took away, for `wait_for_failover`.
struct Killed {
    addr: SocketAddr,
    id: String,
    slots: Vec<RangeInclusive<u16>>,
    /// Its replicas' ids and addresses when it was killed.
    replicas: Vec<(String, SocketAddr)>,
    at: Instant,
}

/// A running cluster; killed and removed on drop.
pub struct LocalCluster {
    options: ClusterOptions,
    nodes: Vec<Node>,
    killed: Option<Killed>,
    // Dropped after `Drop::drop` has killed the nodes writing into it.
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts and forms a cluster, returning once every node reports
    /// `cluster_state:ok`, all slots are served, and every replica's link to
    /// its master is up.
    pub fn start(options: ClusterOptions) -> Result<Self> {
        if options.masters == 0 || options.masters > usize::from(SLOTS) {
            bail!(
                "a cluster needs 1..={SLOTS} masters, not {}",
                options.masters
            );
        }
        let mut attempt = 1;
        loop {
            match Self::start_once(options) {
                Err(error)
                    if attempt < START_ATTEMPTS && error.chain().any(|e| e.is::<PortTaken>()) =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(options: ClusterOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("spool-cluster-")
            .tempdir()
            .context("creating the cluster's temp dir")?;
        let count = options.masters * (1 + options.replicas_per_master);
        let mut nodes = Vec::with_capacity(count);
        for port in free_node_ports(count)? {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir(&node_dir)
                .with_context(|| format!("creating {}", node_dir.display()))?;
            nodes.push(Node {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                dir: node_dir,
                process: None,
            });
        }
        let mut cluster = Self {
            options,
            nodes,
            killed: None,
            dir,
        };
        for node in &mut cluster.nodes {
            node.spawn(options.appendfsync)?;
        }
        for node in &mut cluster.nodes {
            node.wait_answers()?;
        }
        cluster.form()?;
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// Forms the cluster: with `redis-cli --cluster create` from 3 masters,
    /// by hand below (the tool refuses fewer).
    fn form(&self) -> Result<()> {
        if self.options.masters >= 3 {
            self.create_with_redis_cli()
        } else {
            self.form_by_hand()
        }
    }

    /// `redis-cli --cluster create`: the first `masters` nodes become the
    /// masters, with the slots split evenly, and the rest their replicas.
    fn create_with_redis_cli(&self) -> Result<()> {
        let mut command = std::process::Command::new("redis-cli");
        command.args(["--cluster", "create"]);
        command.args(self.nodes.iter().map(|node| node.addr.to_string()));
        command.args([
            "--cluster-replicas",
            &self.options.replicas_per_master.to_string(),
            "--cluster-yes",
        ]);
        let output = command
            .output()
            .context("running redis-cli (install redis-tools, or the redis package)")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Slots, then MEET, then REPLICATE, as `redis-cli --cluster create`
    /// does, but for any number of masters.
    fn form_by_hand(&self) -> Result<()> {
        let (masters, replicas) = self.nodes.split_at(self.options.masters);
        for (index, node) in self.nodes.iter().enumerate() {
            // Distinct epochs spare the nodes a collision-resolution round.
            run(
                node.addr,
                "CLUSTER SET-CONFIG-EPOCH",
                redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(index + 1),
            )?;
        }
        for (index, node) in masters.iter().enumerate() {
            let slots = slot_share(index, masters.len());
            run(
                node.addr,
                "CLUSTER ADDSLOTSRANGE",
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(slots.start())
                    .arg(slots.end()),
            )?;
        }
        let first = &self.nodes[0];
        for node in &self.nodes[1..] {
            run(
                first.addr,
                "CLUSTER MEET",
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg(node.addr.ip().to_string())
                    .arg(node.addr.port()),
            )?;
        }
        for node in &self.nodes {
            wait_for(GOSSIP_TIMEOUT, || {
                let view = self.view_of(node.addr)?;
                let known = view.nodes.iter().filter(|n| n.is_live()).count();
                if known != self.nodes.len() {
                    bail!("knows {known} of {} nodes", self.nodes.len());
                }
                Ok(())
            })
            .with_context(|| self.not_ready(node, GOSSIP_TIMEOUT))?;
        }
        for (index, replica) in replicas.iter().enumerate() {
            let master = &masters[index % masters.len()];
            let master_id = my_id(master.addr)?;
            run(
                replica.addr,
                "CLUSTER REPLICATE",
                redis::cmd("CLUSTER").arg("REPLICATE").arg(&master_id),
            )?;
        }
        Ok(())
    }

    /// Every running node reports the whole cluster healthy and agrees on
    /// its shape; a replica's link to its master is up.
    fn wait_ready(&self) -> Result<()> {
        for node in self.nodes.iter().filter(|n| n.process.is_some()) {
            wait_for(READY_TIMEOUT, || self.ready_probe(node.addr))
                .with_context(|| self.not_ready(node, READY_TIMEOUT))?;
        }
        Ok(())
    }

    fn ready_probe(&self, addr: SocketAddr) -> Result<()> {
        let mut connection = connect(addr)?;
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut connection)?;
        for (field, wanted) in [
            ("cluster_state", "ok".to_owned()),
            ("cluster_slots_assigned", SLOTS.to_string()),
            ("cluster_slots_ok", SLOTS.to_string()),
            ("cluster_known_nodes", self.nodes.len().to_string()),
        ] {
            let seen = info_field(&info, field).unwrap_or("missing");
            if seen != wanted {
                bail!("{field}:{seen}");
            }
        }
        let view = self.view_of(addr)?;
        let masters = view.masters().len();
        let replicas = view
            .nodes
            .iter()
            .filter(|n| n.is_live() && n.is_replica())
            .count();
        let wanted_replicas = self.options.masters * self.options.replicas_per_master;
        if masters != self.options.masters || replicas != wanted_replicas {
            bail!("sees {masters} masters with slots and {replicas} replicas");
        }
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut connection)?;
        if info_field(&replication, "role") == Some("slave") {
            let link = info_field(&replication, "master_link_status").unwrap_or("missing");
            if link != "up" {
                bail!("master_link_status:{link}");
            }
        }
        Ok(())
    }

    fn not_ready(&self, node: &Node, timeout: Duration) -> String {
        format!(
            "node {} not ready within {timeout:?}; see its log {}",
            node.addr,
            node.log().display()
        )
    }

    /// Every node, masters and replicas, in the URL form spool accepts.
    pub fn seeds_url(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.addr.to_string()).collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// `redis://` URLs of every node, for `redis::cluster::ClusterClient`.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| node_url(n.addr)).collect()
    }

    /// Every node's address, running or not.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The masters serving slots now, in the order of their first slot, as
    /// the first running node that answers sees them.
    pub fn masters(&self) -> Result<Vec<Master>> {
        Ok(self.live_view()?.masters())
    }

    /// `DBSIZE` of each current master.
    pub fn keys_per_master(&self) -> Result<Vec<(SocketAddr, u64)>> {
        self.masters()?
            .into_iter()
            .map(|master| {
                let keys: u64 = redis::cmd("DBSIZE")
                    .query(&mut connect(master.addr)?)
                    .with_context(|| format!("DBSIZE on {}", master.addr))?;
                Ok((master.addr, keys))
            })
            .collect()
    }

    /// A plain (not cluster-aware) client of one node.
    pub fn client(&self, addr: SocketAddr) -> Result<redis::Client> {
        redis::Client::open(node_url(addr)).with_context(|| format!("client for {addr}"))
    }

    /// A plain connection to one node, with I/O timeouts.
    pub fn connection(&self, addr: SocketAddr) -> Result<redis::Connection> {
        connect(addr)
    }

    /// SIGKILLs the master at `index` of [`masters`](Self::masters) and
    /// returns its address.
    pub fn kill_master(&mut self, index: usize) -> Result<SocketAddr> {
        let view = self.live_view()?;
        let masters = view.masters();
        let master = masters
            .get(index)
            .with_context(|| format!("no master {index}: there are {}", masters.len()))?;
        let replicas = view
            .replicas_of(&master.id)
            .map(|n| (n.id.clone(), n.addr))
            .collect();
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.addr == master.addr)
            .with_context(|| format!("master {} is not one of ours", master.addr))?;
        node.kill();
        self.killed = Some(Killed {
            addr: master.addr,
            id: master.id.clone(),
            slots: master.slots.clone(),
            replicas,
            at: Instant::now(),
        });
        Ok(master.addr)
    }

    /// Waits until every running node reports `cluster_state:ok` with the
    /// killed master's slots served by one of its former replicas; returns
    /// the time from the kill to then. Needs 3 or more masters (a majority
    /// must agree) and a replica of the killed one.
    pub fn wait_for_failover(&self, timeout: Duration) -> Result<Duration> {
        let killed = self
            .killed
            .as_ref()
            .context("no master was killed (kill_master first)")?;
        if killed.replicas.is_empty() {
            bail!("master {} had no replica to promote", killed.addr);
        }
        wait_for(timeout, || {
            for node in self.nodes.iter().filter(|n| n.process.is_some()) {
                failover_probe(node.addr, killed).with_context(|| format!("node {}", node.addr))?;
            }
            Ok(killed.at.elapsed())
        })
        .with_context(|| {
            let logs: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| killed.replicas.iter().any(|(_, addr)| *addr == n.addr))
                .map(|n| n.log().display().to_string())
                .collect();
            format!(
                "no replica of {} ({}) took over its slots within {timeout:?}; see {}",
                killed.addr,
                killed.id,
                logs.join(", ")
            )
        })
    }

    /// Starts a killed node again on its port and directory, and waits until
    /// the cluster is whole and healthy (a former master rejoins as a
    /// replica of the node that took its slots).
    pub fn restart(&mut self, addr: SocketAddr) -> Result<()> {
        let fsync = self.options.appendfsync;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.addr == addr)
            .with_context(|| format!("{addr} is not a node of this cluster"))?;
        if node.process.is_some() {
            bail!("node {addr} is still running");
        }
        node.spawn(fsync)?;
        node.wait_answers()?;
        if self.killed.as_ref().is_some_and(|k| k.addr == addr) {
            self.killed = None;
        }
        self.wait_ready()
    }

    /// CLUSTER NODES of the first running node that answers.
    fn live_view(&self) -> Result<ClusterView> {
        let mut last = anyhow!("no node is running");
        for node in self.nodes.iter().filter(|n| n.process.is_some()) {
            match self.view_of(node.addr) {
                Ok(view) => return Ok(view),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    fn view_of(&self, addr: SocketAddr) -> Result<ClusterView> {
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut connect(addr)?)
            .with_context(|| format!("CLUSTER NODES on {addr}"))?;
        ClusterView::parse(&text).with_context(|| format!("CLUSTER NODES of {addr}"))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

fn failover_probe(addr: SocketAddr, killed: &Killed) -> Result<()> {
    let mut connection = connect(addr)?;
    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut connection)?;
    let state = info_field(&info, "cluster_state").unwrap_or("missing");
    if state != "ok" {
        bail!("cluster_state:{state}");
    }
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut connection)?;
    let view = ClusterView::parse(&text)?;
    for range in &killed.slots {
        let owner = view
            .owner_of(*range.start())
            .with_context(|| format!("slot {} has no live owner", range.start()))?;
        if !killed.replicas.iter().any(|(id, _)| *id == owner.id) {
            bail!("slot {} still served by {}", range.start(), owner.id);
        }
    }
    Ok(())
}

/// Polls `probe` until it succeeds; on timeout, its last error.
fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() >= timeout => {
                return Err(error.context("last seen"));
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// The `index`th of `masters` near-equal contiguous shares of the slots: the
/// slots [`LocalCluster`] gives its `index`th master.
pub fn slot_share(index: usize, masters: usize) -> RangeInclusive<u16> {
    let bound = |i: usize| (i * usize::from(SLOTS) / masters) as u16;
    bound(index)..=bound(index + 1) - 1
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_shares_cover_every_slot_once() {
        for masters in 1..=5 {
            let shares: Vec<_> = (0..masters).map(|i| slot_share(i, masters)).collect();
            assert_eq!(*shares[0].start(), 0);
            assert_eq!(*shares[masters - 1].end(), SLOTS - 1);
            for pair in shares.windows(2) {
                assert_eq!(*pair[0].end() + 1, *pair[1].start());
            }
        }
    }
}
