//! `spool bench-cluster`'s core on real Redis Clusters (1 and 2 masters,
//! tiny N): every job completes, each size gets its row, and the queues'
//! names spread their slots evenly over the masters. No timing assertion.

use spool::bench::cluster::{ClusterBenchArgs, measure, queue_names, queue_slot};
use spool::local_cluster::slot_share;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_completes_on_each_cluster_size_and_each_size_gets_a_row() {
    let args = ClusterBenchArgs {
        jobs: 300,
        instances: 1,
        queues: 4,
        concurrency: 4,
        masters: vec![1, 2],
    };
    let report = measure(&args).await.expect("the benchmark runs");

    let sizes: Vec<usize> = report.runs.iter().map(|run| run.masters).collect();
    assert_eq!(sizes, vec![1, 2]);
    for run in &report.runs {
        assert_eq!(run.completed, 300, "{} master(s): {run:?}", run.masters);
        assert_eq!(run.failed, 0, "{} master(s): {run:?}", run.masters);
        assert_eq!(run.nodes.len(), run.masters);
        // 4 queues over equal slot shares: as many queues, and jobs, on each master.
        for node in &run.nodes {
            assert_eq!(node.queues.len(), 4 / run.masters, "{run:?}");
            assert_eq!(node.jobs, 300 / run.masters, "{run:?}");
        }
        assert!(run.jobs_per_sec > 0.0);
    }
    let table = report.render();
    println!("{table}");
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|line| !line.contains("jobs/s"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 2, "a row per size:\n{table}");
    assert!(rows[0].trim_start().starts_with("1 "), "{table}");
    assert!(rows[1].trim_start().starts_with("2 "), "{table}");
}

#[test]
fn queue_names_put_one_queue_in_each_equal_slice_of_the_slots() {
    let names = queue_names(6).expect("names");
    assert_eq!(names.len(), 6);
    for (index, name) in names.iter().enumerate() {
        assert!(
            slot_share(index, 6).contains(&queue_slot(name)),
            "{name} (slot {}) is outside slice {index}",
            queue_slot(name)
        );
    }
    // So each of 3 masters' shares holds exactly 2 of them.
    for master in 0..3 {
        let held = names
            .iter()
            .filter(|name| slot_share(master, 3).contains(&queue_slot(name)))
            .count();
        assert_eq!(held, 2, "master {master}");
    }
}
