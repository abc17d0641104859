//! Text deltas of a model call (issue 16: coalesced by time and size): a
//! chat job's `text_delta` events carry every byte of the model's answer in
//! order, a fast stream's pieces share events (no event over the size cap),
//! and a slow stream's first piece is written without waiting for the rest.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);
/// The host's cap on one delta's text (`DELTA_MAX_BYTES` in
/// `host/core/src/worker/write_behind.rs`): a delta that reaches it closes.
const DELTA_MAX_BYTES: usize = 4096;

/// Runs one chat job on `prompt` and returns the texts of its `text_delta`
/// events, oldest first, read from the job's event stream.
async fn deltas_of(redis: &Redis, host: &Host, prompt: &str) -> Vec<String> {
    let api = Api::default();
    let (status, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": prompt}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let job = api.wait_terminal(host, &id, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");
    stream_events(&mut redis.connection(), &format!("job_events:{id}"))
        .into_iter()
        .filter(|(event_type, _)| event_type == "text_delta")
        .map(|(_, data)| data["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_streams_pieces_share_events_under_the_size_cap_and_keep_every_byte_in_order() {
    let redis = Redis::start();
    let stub = stub().await; // no delay: the pieces arrive back to back
    let host = Host::start(&redis, &stub, HostOptions::default());
    // ~9,000 bytes of answer in ~1,000 word pieces, some of them multi-byte.
    let prompt: String = (0..1000).map(|i| format!("wörd{i} ")).collect();
    let answer = expected_chat_response(&prompt, 0);
    let pieces = spool::stub::word_pieces(&answer);
    let longest_piece = pieces.iter().map(|p| p.len()).max().unwrap_or(0);

    let deltas = deltas_of(&redis, &host, &prompt).await;

    assert_eq!(deltas.concat(), answer, "every byte, in order");
    assert!(
        deltas.len() < pieces.len() / 10,
        "{} pieces were coalesced into {} events",
        pieces.len(),
        deltas.len()
    );
    for delta in &deltas {
        assert!(
            delta.len() < DELTA_MAX_BYTES + longest_piece,
            "a delta of {} bytes: a delta closes once it holds {DELTA_MAX_BYTES}",
            delta.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_streams_first_piece_is_written_without_waiting_for_the_rest() {
    let redis = Redis::start();
    let stub = stub().await;
    // 60 ms between pieces, far longer than the coalescing window.
    stub.set_timing(0, 60);
    let host = Host::start(&redis, &stub, HostOptions::default());
    let prompt = "a few words, each its own piece";
    let answer = expected_chat_response(prompt, 0);

    let deltas = deltas_of(&redis, &host, prompt).await;

    assert_eq!(deltas.concat(), answer, "every byte, in order");
    assert!(
        deltas.len() > 1,
        "the deltas were held until the stream ended: {deltas:?}"
    );
    assert!(
        deltas[0].len() < answer.len() / 2,
        "the first delta went out before most pieces came: {deltas:?}"
    );
}
