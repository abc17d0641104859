//! `spool::local_cluster` against real redis-server processes: the cluster
//! shapes the tests and the cluster benchmark use form healthy, a key written
//! through a cluster-aware client lands on the master owning its slot, and
//! SIGKILL of a master under `appendfsync always` ends with its replica
//! serving its slots, its acknowledged data intact.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};
use spool::local_cluster::{AppendFsync, ClusterOptions, LocalCluster, Master, SLOTS};

const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);

fn start(masters: usize, replicas_per_master: usize, appendfsync: AppendFsync) -> LocalCluster {
    let started = Instant::now();
    let cluster = LocalCluster::start(ClusterOptions {
        masters,
        replicas_per_master,
        appendfsync,
    })
    .expect("the cluster starts");
    println!(
        "{masters} masters x {replicas_per_master} replicas ready in {:?}",
        started.elapsed()
    );
    cluster
}

fn cluster_connection(cluster: &LocalCluster) -> ClusterConnection {
    ClusterClient::new(cluster.node_urls())
        .and_then(|client| client.get_connection())
        .expect("cluster-aware connection")
}

fn assert_slots_covered_once(masters: &[Master]) {
    let mut owners = vec![0u32; usize::from(SLOTS)];
    for master in masters {
        for range in &master.slots {
            for slot in range.clone() {
                owners[usize::from(slot)] += 1;
            }
        }
    }
    let wrong: Vec<usize> = (0..owners.len()).filter(|&s| owners[s] != 1).collect();
    assert!(
        wrong.is_empty(),
        "{} slots not served exactly once, first {:?}",
        wrong.len(),
        wrong.first()
    );
}

fn slot_of(cluster: &LocalCluster, key: &str) -> u16 {
    let any = cluster.addrs()[0];
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut cluster.connection(any).expect("connection"))
        .expect("CLUSTER KEYSLOT")
}

fn owner_of(masters: &[Master], slot: u16) -> &Master {
    masters
        .iter()
        .find(|m| m.slots.iter().any(|r| r.contains(&slot)))
        .unwrap_or_else(|| panic!("slot {slot} has an owner"))
}

fn info(cluster: &LocalCluster, addr: SocketAddr, section: &str, field: &str) -> String {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut cluster.connection(addr).expect("connection"))
        .expect("INFO");
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{field} in INFO {section} of {addr}"))
        .trim()
        .to_owned()
}

/// A plain GET on the owning master; another node would answer MOVED.
fn get_on(cluster: &LocalCluster, addr: SocketAddr, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut cluster.connection(addr).expect("connection"))
        .unwrap_or_else(|e| panic!("GET {key} on {addr}: {e}"))
}

#[test]
fn three_masters_with_a_replica_each_form_and_keys_land_on_their_slot_owner() {
    let cluster = start(3, 1, AppendFsync::Everysec);
    let masters = cluster.masters().expect("masters");
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert_slots_covered_once(&masters);

    let addrs = cluster.addrs();
    assert_eq!(addrs.len(), 6);
    let url = cluster.seeds_url();
    let listed: Vec<&str> = url
        .strip_prefix("redis+cluster://")
        .expect("redis+cluster:// URL")
        .split(',')
        .collect();
    let expected: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    assert_eq!(listed, expected, "seeds_url lists every node");

    let mut replicated: Vec<SocketAddr> = Vec::new();
    for &addr in &addrs {
        if masters.iter().any(|m| m.addr == addr) {
            assert_eq!(info(&cluster, addr, "replication", "connected_slaves"), "1");
        } else {
            assert_eq!(info(&cluster, addr, "replication", "role"), "slave");
            assert_eq!(
                info(&cluster, addr, "replication", "master_link_status"),
                "up"
            );
            let port: u16 = info(&cluster, addr, "replication", "master_port")
                .parse()
                .expect("master_port");
            replicated.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    replicated.sort();
    let mut master_addrs: Vec<SocketAddr> = masters.iter().map(|m| m.addr).collect();
    master_addrs.sort();
    assert_eq!(replicated, master_addrs, "one replica per master");

    let mut connection = cluster_connection(&cluster);
    let mut expected_keys: BTreeMap<SocketAddr, u64> =
        masters.iter().map(|m| (m.addr, 0)).collect();
    for n in 0..30 {
        let key = format!("spool:cluster:{n}");
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(n)
            .query(&mut connection)
            .expect("SET through the cluster client");
        let owner = owner_of(&masters, slot_of(&cluster, &key));
        assert_eq!(get_on(&cluster, owner.addr, &key), Some(n.to_string()));
        *expected_keys.entry(owner.addr).or_default() += 1;
    }
    let keys: BTreeMap<SocketAddr, u64> = cluster
        .keys_per_master()
        .expect("keys per master")
        .into_iter()
        .collect();
    assert_eq!(keys, expected_keys);
    assert!(
        keys.values().all(|&n| n > 0),
        "30 keys reach every master: {keys:?}"
    );
}

#[test]
fn two_masters_split_the_slots_and_each_has_its_replica() {
    let cluster = start(2, 1, AppendFsync::Everysec);
    let masters = cluster.masters().expect("masters");
    assert_eq!(masters.len(), 2, "{masters:?}");
    assert_slots_covered_once(&masters);
    for master in &masters {
        assert_eq!(
            info(&cluster, master.addr, "replication", "connected_slaves"),
            "1"
        );
    }
    let mut connection = cluster_connection(&cluster);
    for n in 0..20 {
        let () = redis::cmd("SET")
            .arg(format!("spool:pair:{n}"))
            .arg(n)
            .query(&mut connection)
            .expect("SET through the cluster client");
    }
    let keys = cluster.keys_per_master().expect("keys per master");
    assert_eq!(keys.iter().map(|(_, n)| n).sum::<u64>(), 20, "{keys:?}");
}

#[test]
fn one_master_without_replicas_serves_every_slot() {
    let cluster = start(1, 0, AppendFsync::Everysec);
    let masters = cluster.masters().expect("masters");
    assert_eq!(masters.len(), 1);
    assert_eq!(masters[0].slots, vec![0..=SLOTS - 1]);
    assert_eq!(cluster.addrs(), vec![masters[0].addr]);
    assert_eq!(
        info(&cluster, masters[0].addr, "cluster", "cluster_enabled"),
        "1"
    );

    let mut connection = cluster_connection(&cluster);
    for n in 0..20 {
        let () = redis::cmd("SET")
            .arg(format!("spool:single:{n}"))
            .arg(n)
            .query(&mut connection)
            .expect("SET through the cluster client");
    }
    assert_eq!(
        cluster.keys_per_master().expect("keys per master"),
        vec![(masters[0].addr, 20)]
    );
}

// Async, as spool's own client is: redis-rs's sync `ClusterConnection` only
// reconnects to a dead master's address and never relearns the slots, so it
// fails until it is made anew. The blocking cluster calls hold one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_with_acknowledged_writes_kept() {
    let mut cluster = start(3, 1, AppendFsync::Always);
    let masters = cluster.masters().expect("masters");
    let mut connection = ClusterClient::new(cluster.node_urls())
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("cluster-aware connection");
    // One hash tag: both keys live in the killed master's slot.
    let (before, after) = ("{spool:failover}:before", "{spool:failover}:after");
    let () = redis::cmd("SET")
        .arg(before)
        .arg("kept")
        .query_async(&mut connection)
        .await
        .expect("SET before the kill");
    let slot = slot_of(&cluster, before);
    let victim = owner_of(&masters, slot).clone();
    let index = masters
        .iter()
        .position(|m| m.addr == victim.addr)
        .expect("index");
    // Replication is asynchronous even under `appendfsync always`: only a
    // write the replica acknowledged survives a failover.
    let acknowledged: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query(&mut cluster.connection(victim.addr).expect("connection"))
        .expect("WAIT");
    assert_eq!(acknowledged, 1, "the replica acknowledged the write");

    assert_eq!(cluster.kill_master(index).expect("kill"), victim.addr);
    let took = cluster
        .wait_for_failover(FAILOVER_TIMEOUT)
        .expect("the replica takes over");
    println!("failover of {} took {took:?}", victim.addr);

    let now = cluster.masters().expect("masters after failover");
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().all(|m| m.addr != victim.addr));
    assert_slots_covered_once(&now);
    let promoted = owner_of(&now, slot).clone();
    assert_eq!(
        promoted.slots, victim.slots,
        "the replica took all its slots"
    );

    // The client made before the kill finds the new owner by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        let result = redis::cmd("SET")
            .arg(after)
            .arg("new")
            .query_async::<()>(&mut connection)
            .await;
        match result {
            Ok(()) => break Ok(()),
            Err(error) if Instant::now() > deadline => break Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    written.expect("a write to the killed master's slot succeeds again");
    let kept: Option<String> = redis::cmd("GET")
        .arg(before)
        .query_async(&mut connection)
        .await
        .expect("GET after failover");
    assert_eq!(kept.as_deref(), Some("kept"));
    assert_eq!(
        get_on(&cluster, promoted.addr, after).as_deref(),
        Some("new")
    );

    let restarting = Instant::now();
    cluster
        .restart(victim.addr)
        .expect("the killed node comes back");
    println!("{} rejoined in {:?}", victim.addr, restarting.elapsed());
    assert_eq!(info(&cluster, victim.addr, "replication", "role"), "slave");
    assert_eq!(
        info(&cluster, victim.addr, "replication", "master_port"),
        promoted.addr.port().to_string(),
        "it rejoins as a replica of the node that took its slots"
    );
}
