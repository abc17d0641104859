//! Issue 17: the event hub on Redis Cluster, driven directly (no HTTP) over a
//! one-node cluster started here, which refuses every command spanning hash
//! slots as a real cluster does. Watchers of keys in different slots each get
//! every new entry once, in order; a node that goes away tells its watchers
//! to resume; the idle read count is bounded by the watched slots.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::StreamId;
use spool_core::connection::{self, RedisConnection};
use spool_core::hub::{Fate, Hub, HubConfig, Subscription};

use crate::support::{command_calls, free_port, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// A one-node Redis Cluster owning all 16384 slots, in its own temp dir.
struct ClusterNode {
    dir: tempfile::TempDir,
    port: u16,
    appendonly: bool,
    child: Option<Child>,
}

impl ClusterNode {
    fn start(appendonly: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("spool-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut node = Self {
            dir,
            port: cluster_port(),
            appendonly,
            child: None,
        };
        node.spawn();
        redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query::<()>(&mut node.plain())
            .expect("CLUSTER ADDSLOTSRANGE");
        node.wait_ok();
        node
    }

    /// Starts (or restarts, from its nodes.conf and AOF) the server.
    fn spawn(&mut self) {
        let dir = self.dir.path();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(dir.join("nodes.conf"))
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--appendonly"])
            .arg(if self.appendonly { "yes" } else { "no" })
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let client = self.client();
        wait_until("the cluster node answers PING", WAIT, || {
            client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    fn wait_ok(&self) {
        let client = self.client();
        wait_until("cluster_state:ok", WAIT, || {
            client
                .get_connection()
                .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("node url")
    }

    /// A plain (non-cluster) connection: fine for admin commands and for
    /// single-key commands, since this node owns every slot.
    fn plain(&self) -> redis::Connection {
        self.client().get_connection().expect("connect to the node")
    }

    fn cluster_url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.port)
    }

    /// Calls of `command` so far (INFO commandstats).
    fn calls(&self, command: &str) -> u64 {
        command_calls(&mut self.plain(), command)
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A hub on the cluster connection, reading until the test ends.
async fn cluster_hub(node: &ClusterNode, instance: &str) -> (Hub, RedisConnection) {
    let (redis, nodes) = connection::open(&node.cluster_url(), None)
        .await
        .expect("open the cluster");
    assert!(redis.is_cluster());
    // Room for every entry a test adds before its watchers read.
    let config = HubConfig {
        buffer_events: 1_000,
        ..HubConfig::default()
    };
    let hub = Hub::new(redis.clone(), instance, config);
    tokio::spawn(hub.clone().run(nodes));
    (hub, redis)
}

async fn xadd(redis: &mut RedisConnection, key: &str, n: usize) -> String {
    redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg("n")
        .arg(n)
        .query_async(redis)
        .await
        .expect("XADD")
}

/// The ids of the next `count` entries of `watcher`, failing on an early end.
async fn take(watcher: &mut Subscription, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let entry: Option<Arc<StreamId>> = tokio::time::timeout(WAIT, watcher.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} got {} of {count} entries, then nothing",
                    watcher.key(),
                    ids.len()
                )
            });
        let entry =
            entry.unwrap_or_else(|| panic!("{} was let go: {:?}", watcher.key(), watcher.fate()));
        ids.push(entry.id.clone());
    }
    ids
}

/// Nothing more arrives within a few poll intervals.
async fn assert_quiet(watcher: &mut Subscription) {
    let more = tokio::time::timeout(Duration::from_millis(500), watcher.recv()).await;
    assert!(
        more.is_err(),
        "{} got an entry twice or unasked: {more:?}",
        watcher.key()
    );
}

// Two keys share slot {q1}; {q2} and the untagged key have slots of their own.
const KEYS: [&str; 4] = ["a:{q1}:x", "c:{q1}:z", "b:{q2}:y", "job_events:1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_keys_in_different_slots_each_get_every_new_entry_once_in_order() {
    let node = ClusterNode::start(false);
    let (hub, mut redis) = cluster_hub(&node, "one").await;
    // Entries before anyone watches are history, not the hub's to deliver.
    for key in KEYS {
        xadd(&mut redis, key, 0).await;
    }
    let mut watchers = Vec::new();
    for key in KEYS {
        for _ in 0..2 {
            watchers.push(
                hub.subscribe(key.to_owned(), "holder")
                    .await
                    .expect("subscribe"),
            );
        }
    }
    // More than one read's batch per key, interleaved over the slots.
    const ENTRIES: usize = 450;
    let mut added: Vec<Vec<String>> = vec![Vec::new(); KEYS.len()];
    for n in 1..=ENTRIES {
        for (index, key) in KEYS.iter().enumerate() {
            added[index].push(xadd(&mut redis, key, n).await);
        }
    }
    for (index, watcher) in watchers.iter_mut().enumerate() {
        let got = take(watcher, ENTRIES).await;
        assert_eq!(got, added[index / 2], "{}", watcher.key());
    }
    for watcher in &mut watchers {
        assert_quiet(watcher).await;
        assert_eq!(watcher.fate(), Fate::Live);
    }

    // A later watcher joins where the hub is: only newer entries reach it.
    let mut late = hub
        .subscribe(KEYS[0].to_owned(), "holder")
        .await
        .expect("subscribe late");
    assert_eq!(late.joined_at(), added[0].last().expect("entries").as_str());
    let newer = [
        xadd(&mut redis, KEYS[0], 1).await,
        xadd(&mut redis, KEYS[0], 2).await,
    ];
    assert_eq!(take(&mut late, 2).await, newer);
    assert_eq!(take(&mut watchers[0], 2).await, newer);
    assert_quiet(&mut late).await;
    assert_eq!(hub.stats().streams, KEYS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gone_and_back_tells_watchers_to_resume_and_new_watchers_work() {
    let mut node = ClusterNode::start(true);
    let (hub, mut redis) = cluster_hub(&node, "two").await;
    let mut watchers = Vec::new();
    for key in KEYS {
        watchers.push(
            hub.subscribe(key.to_owned(), "holder")
                .await
                .expect("subscribe"),
        );
    }
    let mut last = Vec::new();
    for (key, watcher) in KEYS.iter().zip(&mut watchers) {
        let id = xadd(&mut redis, key, 1).await;
        assert_eq!(take(watcher, 1).await, std::slice::from_ref(&id));
        last.push(id);
    }

    node.kill();
    for watcher in &mut watchers {
        let end = tokio::time::timeout(WAIT, watcher.recv()).await;
        assert!(
            matches!(end, Ok(None)),
            "{} was not let go: {end:?}",
            watcher.key()
        );
        assert_eq!(watcher.fate(), Fate::Failed, "{}", watcher.key());
    }
    assert_eq!(hub.stats().streams, 0);

    node.spawn();
    node.wait_ok();
    // The cluster connection finds the node again; until then subscribing
    // fails as a store error, which callers report as "resume later".
    let started = Instant::now();
    let mut fresh = Vec::new();
    for key in KEYS {
        let watcher = loop {
            match hub.subscribe(key.to_owned(), "holder").await {
                Ok(watcher) => break watcher,
                Err(error) => {
                    assert!(started.elapsed() < WAIT, "cannot subscribe again: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        fresh.push(watcher);
    }
    for ((key, watcher), before) in KEYS.iter().zip(&mut fresh).zip(&last) {
        // The AOF kept the stream: the new watcher starts after its last entry.
        assert_eq!(watcher.joined_at(), before.as_str(), "{key}");
        let id = xadd(&mut redis, key, 2).await;
        assert_eq!(take(watcher, 1).await, [id]);
    }
}

/// Prints the idle read rate with 100 watched keys in 10 slots, and the
/// delivery delay; asserts only the bound the design promises: at most one
/// read per slot per interval, and none with no watcher.
/// `SPOOL_HUB_IDLE_SECS` sets the window (default 3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_hub_reads_each_watched_slot_at_most_once_per_interval() {
    let node = ClusterNode::start(false);
    let (hub, mut redis) = cluster_hub(&node, "idle").await;
    let mut watchers = Vec::new();
    for slot in 0..10 {
        for key in 0..10 {
            let key = format!("idle:{{s{slot}}}:{key}");
            xadd(&mut redis, &key, 0).await;
            watchers.push(hub.subscribe(key, "holder").await.expect("subscribe"));
        }
    }
    let window = std::env::var("SPOOL_HUB_IDLE_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs);
    // Let the subscriptions' wake-ups settle before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = node.calls("xread");
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let reads = node.calls("xread") - before;
    let elapsed = started.elapsed();
    let interval = Duration::from_millis(HubConfig::default().cluster_poll_ms);
    let ticks = (elapsed.as_millis() / interval.as_millis()) as u64 + 1;
    println!(
        "idle hub on a cluster: 100 keys in 10 slots, {reads} XREADs in {elapsed:?} = {:.1}/s (poll {interval:?})",
        reads as f64 / elapsed.as_secs_f64()
    );
    assert!(reads > 0, "the hub stopped reading");
    assert!(
        reads <= 10 * ticks,
        "{reads} reads in {ticks} intervals over 10 slots: more than one per slot per interval"
    );
    // The delay from before an XADD to its delivery, on a quiet hub.
    let mut delays = Vec::new();
    for (n, watcher) in (0u64..).zip(watchers.iter_mut().take(20)) {
        // Each XADD at another point of the poll's beat: delivery ends a
        // poll, so a fixed pause would always land on the same phase.
        tokio::time::sleep(Duration::from_millis(n * 53 % 100)).await;
        let started = Instant::now();
        let id = xadd(&mut redis, watcher.key(), 1).await;
        assert_eq!(take(watcher, 1).await, [id]);
        delays.push(started.elapsed());
    }
    delays.sort();
    println!(
        "idle hub on a cluster: delivery delay p50 {:?}, max {:?} over {} entries",
        delays[delays.len() / 2],
        delays[delays.len() - 1],
        delays.len()
    );

    // No watcher left, no read.
    drop(watchers);
    tokio::time::sleep(interval * 2).await;
    let unwatched = node.calls("xread");
    tokio::time::sleep(interval * 5).await;
    assert_eq!(
        node.calls("xread"),
        unwatched,
        "reads went on with no watcher"
    );
}
