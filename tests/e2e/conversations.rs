//! Conversations (design B) on two instances sharing one Redis: fan-out over
//! Pub/Sub to clients of both, the bot's answer relayed into the
//! conversation, resuming by last id on the other instance, history, and
//! bad input.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::chat_support::{ChatClient, ids, is_answer_end, streamed_text};
use crate::support::{Api, Host, HostOptions, Redis, admin_token, expected_chat_response, stub};

const WAIT: Duration = Duration::from_secs(20);

/// Asserts stream ids strictly increase (so no frame came twice).
fn assert_ordered(frames: &[Value]) {
    let ids = ids(frames);
    let positions: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let (ms, seq) = id.split_once('-').expect("a stream id");
            (ms.parse().expect("ms"), seq.parse().expect("seq"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "ids out of order or repeated: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_every_client_on_both_instances_once_with_the_bots_streamed_answer() {
    let redis = Redis::start();
    a_conversation_spans_two_instances(&redis.url(), &redis.url()).await;
}

/// The conversation scenario on the Redis (or cluster) at `redis_url`, with
/// design B's own subscriber on `subscriber_url` (one node of it): a message
/// reaches every client on both instances once, with the bot's streamed
/// answer relayed once; what was published is what was stored; the history
/// is the same from either instance.
pub async fn a_conversation_spans_two_instances(redis_url: &str, subscriber_url: &str) {
    let stub = stub().await;
    let first = Host::start_at(redis_url, &stub, HostOptions::default());
    let second = Host::start_at(redis_url, &stub, HostOptions::default());
    // A client of design B subscribed to the channel itself.
    let client = redis::Client::open(subscriber_url).expect("redis url");
    let mut channel = client.get_async_pubsub().await.expect("pubsub");
    channel.subscribe("chat:room-1").await.expect("subscribe");

    let mut alice = ChatClient::connect(&first.base, "room-1", None).await;
    let mut carol = ChatClient::connect(&first.base, "room-1", None).await;
    let mut bob = ChatClient::connect(&second.base, "room-1", None).await;
    let mut text_only = ChatClient::connect(&second.base, "room-1?format=text", None).await;
    // Plain text, as design B's clients send it.
    alice.send("hello there").await;

    let mut seen = Vec::new();
    let mut job = String::new();
    for client in [&mut alice, &mut carol, &mut bob] {
        let first_frame = client.next(WAIT).await.expect("the message arrives");
        assert_eq!(first_frame["type"], "message", "{first_frame}");
        assert_eq!(first_frame["text"], "hello there");
        assert_eq!(first_frame["conversationId"], "room-1");
        job = first_frame["jobId"].as_str().expect("a bot job").to_owned();
        let mut frames = vec![first_frame];
        frames.extend(client.until(WAIT, |f| is_answer_end(f, &job)).await);
        seen.push(frames);
    }
    for frames in &seen {
        assert_ordered(frames);
        assert_eq!(
            ids(frames),
            ids(&seen[0]),
            "every client gets the same frames"
        );
        assert_eq!(frames, &seen[0]);
        assert_eq!(
            frames.iter().filter(|f| f["type"] == "message").count(),
            1,
            "the message came once"
        );
    }
    let expected = expected_chat_response("hello there", 0);
    assert_eq!(streamed_text(&seen[0], &job), expected);
    let last = seen[0].last().expect("frames");
    assert_eq!(last["event"], "task_completed");
    assert_eq!(last["data"]["result"]["response"], expected);

    // Plain-text clients get the texts only.
    assert_eq!(
        text_only.next_text(WAIT).await.as_deref(),
        Some("hello there")
    );
    let mut answer = String::new();
    while answer.len() < expected.len() {
        answer += &text_only.next_text(WAIT).await.expect("answer text");
    }
    assert_eq!(answer, expected);

    // What was published on chat:room-1 is what was stored, with its ids.
    let mut published = Vec::new();
    let mut messages = channel.on_message();
    while published.len() < seen[0].len() {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("published")
            .expect("a message");
        let payload: String = message.get_payload().expect("text");
        published.push(serde_json::from_str::<Value>(&payload).expect("JSON"));
    }
    assert_eq!(published, seen[0]);

    // A JSON frame names its sender.
    bob.send(r#"{"type": "message", "text": "second", "userId": "bob"}"#)
        .await;
    for client in [&mut alice, &mut carol, &mut bob] {
        let frame = client.next(WAIT).await.expect("the second message");
        assert_eq!(
            (frame["text"].as_str(), frame["userId"].as_str()),
            (Some("second"), Some("bob"))
        );
    }

    // The history is the stored conversation, the same from either instance.
    let (status, page) = Api::default()
        .get(&second.url("/api/conversations/room-1/messages?limit=1000"))
        .await;
    assert_eq!(status, 200, "{page}");
    let stored = page["frames"].as_array().expect("frames").clone();
    assert_eq!(&stored[..seen[0].len()], &seen[0][..]);
    assert_eq!(stored[seen[0].len()]["text"], "second");
    let (_, after) = Api::default()
        .get(&first.url(&format!(
            "/api/conversations/room-1/messages?last_id={}",
            ids(&seen[0]).last().expect("an id")
        )))
        .await;
    assert_eq!(after["frames"][0]["text"], "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_mid_answer_resumes_on_the_other_instance_with_exactly_what_it_missed() {
    let redis = Redis::start();
    let stub = stub().await;
    // The answer streams in pieces 40 ms apart, so the cut falls inside it.
    stub.set_timing(0, 40);
    let first = Host::start(&redis, &stub, HostOptions::default());
    let second = Host::start(&redis, &stub, HostOptions::default());
    let mut observer = ChatClient::connect(&second.base, "story", None).await;
    let mut leaving = ChatClient::connect(&first.base, "story", None).await;
    leaving
        .send("tell me a long story about queues and streams and replicas please")
        .await;
    let message = leaving.next(WAIT).await.expect("the message");
    let job = message["jobId"].as_str().expect("job").to_owned();
    leaving.until(WAIT, |f| f["event"] == "text_delta").await;
    let before = leaving.frames.clone();
    let last_id = leaving.last_id().expect("an id");
    leaving.close().await;

    let mut back = ChatClient::connect(&second.base, "story", Some(&last_id)).await;
    let after = back.until(WAIT, |f| is_answer_end(f, &job)).await;
    let everything = observer.until(WAIT, |f| is_answer_end(f, &job)).await;

    assert!(
        !streamed_text(&after, &job).is_empty(),
        "the cut fell inside the answer: {after:#?}"
    );
    let mut joined = before.clone();
    joined.extend(after.iter().cloned());
    assert_ordered(&joined);
    assert_eq!(
        joined, everything,
        "exactly the missed frames, then live ones"
    );
    assert_eq!(
        streamed_text(&joined, &job),
        expected_chat_response(
            "tell me a long story about queues and streams and replicas please",
            0
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_conversation_input_is_refused_by_name_and_the_socket_stays_open() {
    let redis = Redis::start();
    let stub = stub().await;
    let host = Host::start(&redis, &stub, HostOptions::default());
    let api = Api::default();
    for (path, code) in [
        (
            "/api/conversations/a%20b/messages",
            "invalid_conversation_id",
        ),
        (
            "/api/conversations/ok/messages?last_id=abc",
            "invalid_last_id",
        ),
        ("/api/conversations/ok/messages?limit=0", "invalid_query"),
        ("/ws/a%20b", "invalid_conversation_id"),
        ("/ws/ok?last_id=x-1", "invalid_last_id"),
        ("/ws/ok?format=xml", "invalid_format"),
    ] {
        let (status, body) = api.get(&host.url(path)).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}");
    }
    let (status, body) = api.get(&host.url("/ws/ok")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &Value::from("not_a_websocket"))
    );

    let mut client = ChatClient::connect(&host.base, "ok", None).await;
    for (frame, code) in [
        (r#"{"type": "dance"}"#, "invalid_frame"),
        (r#"{"type": "message"}"#, "invalid_frame"),
        ("", "invalid_text"),
    ] {
        client.send(frame).await;
        let error = client.next(WAIT).await.expect("an error frame");
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame}"
        );
    }
    client.send("still here").await;
    let frame = client.next(WAIT).await.expect("the message");
    assert_eq!(frame["text"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_published_while_an_instance_lost_its_pubsub_connection_are_read_from_the_stream() {
    let redis = Redis::start();
    let stub = stub().await;
    let messages_only = HostOptions {
        config: "[conversations]\nbot_queue = \"\"\n".into(),
        ..HostOptions::default()
    };
    let first = Host::start(&redis, &stub, messages_only.clone());
    let second = Host::start(&redis, &stub, messages_only);
    let mut sender = ChatClient::connect(&first.base, "gap", None).await;
    let mut listener = ChatClient::connect(&second.base, "gap", None).await;
    sender.send("before").await;
    assert_eq!(listener.next(WAIT).await.expect("before")["text"], "before");

    // Pub/Sub is at-most-once: whatever is published while a subscriber is
    // cut off never reaches it.
    let killed = redis.kill_pubsub_clients();
    assert!(killed >= 2, "both instances held a Pub/Sub connection");
    let sent: Vec<String> = (0..10).map(|n| format!("during {n}")).collect();
    for text in &sent {
        sender.send(text).await;
    }
    let mut got = vec![listener.frames[0].clone()];
    for _ in &sent {
        got.push(listener.next(WAIT).await.expect("every message arrives"));
    }
    assert_ordered(&got);
    let texts: Vec<&str> = got[1..].iter().filter_map(|f| f["text"].as_str()).collect();
    assert_eq!(texts, sent.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        listener.next(Duration::from_millis(300)).await.is_none(),
        "nothing twice"
    );
}

/// A key bound to a user gets into a conversation only as a member: the
/// first user to open a new conversation owns it, others see "not found"
/// until a member lets them in, a user may take only itself out, and the
/// service's own key (bound to no user) manages any conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_key_enters_only_conversations_it_is_a_member_of() {
    let redis = Redis::start();
    let stub = stub().await;
    let host = Host::start(&redis, &stub, HostOptions::default());
    let service = Api::default();
    let user_key = |user: &'static str| {
        let service = service.clone();
        let url = host.url("/admin/keys");
        async move {
            let (status, created) = service
                .post(
                    &url,
                    &serde_json::json!({"role": "submitter", "userId": user}),
                )
                .await;
            assert_eq!(status, 201, "{created}");
            created["key"].as_str().expect("a key").to_owned()
        }
    };
    let (ada_key, bob_key) = (user_key("ada").await, user_key("bob").await);
    let (ada, bob) = (Api::with_key(Some(&ada_key)), Api::with_key(Some(&bob_key)));
    let members = |user: &str| host.url(&format!("/api/conversations/ada-room/members/{user}"));
    let history = host.url("/api/conversations/ada-room/messages");

    // Ada opens a new conversation, so it is hers.
    let mut ada_socket = ChatClient::try_connect_as(&host.base, "ada-room", None, Some(&ada_key))
        .await
        .expect("ada opens her new conversation");
    ada_socket.send("for ada's eyes").await;
    let said = ada_socket.next(WAIT).await.expect("ada's message");
    assert_eq!(said["userId"], "ada", "{said}");

    // Bob sees nothing of it.
    let refused = ChatClient::try_connect_as(&host.base, "ada-room", None, Some(&bob_key)).await;
    let error = refused.err().expect("bob's socket is refused");
    assert!(error.contains("404"), "bob gets not found: {error}");
    for url in [
        history.clone(),
        host.url("/api/conversations/ada-room/members"),
    ] {
        let (status, reply) = bob.get(&url).await;
        assert_eq!(status, 404, "bob GET {url}: {reply}");
        assert_eq!(reply["error"]["code"], "conversation_not_found", "{reply}");
    }
    let (status, reply) = bob.put(&members("bob"), &serde_json::json!({})).await;
    assert_eq!(status, 404, "bob cannot let himself in: {reply}");

    // Ada lets Bob in: he reads what was said and takes part.
    let (status, reply) = ada.put(&members("bob"), &serde_json::json!({})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["changed"], true, "{reply}");
    let (status, page) = bob.get(&history).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["frames"][0]["text"], "for ada's eyes", "{page}");
    let mut bob_socket = ChatClient::try_connect_as(&host.base, "ada-room", None, Some(&bob_key))
        .await
        .expect("bob, a member now, opens it");
    let first = bob_socket.next(WAIT).await.expect("the history");
    assert_eq!(first["text"], "for ada's eyes", "{first}");
    let (status, list) = service
        .get(&host.url("/api/conversations/ada-room/members"))
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["members"], serde_json::json!(["ada", "bob"]), "{list}");

    // Bob may take only himself out; once out, he may not speak.
    let (status, reply) = bob.send_delete(&members("ada")).await;
    assert_eq!(status, 403, "{reply}");
    let (status, reply) = bob.send_delete(&members("bob")).await;
    assert_eq!(status, 200, "{reply}");
    bob_socket.send("still here?").await;
    let error = bob_socket
        .until(WAIT, |frame| frame["type"] == "error")
        .await
        .pop()
        .expect("an error frame");
    assert_eq!(error["code"], "conversation_not_found", "{error}");
    // Nor hear: his open socket is closed within the membership check.
    assert!(
        bob_socket.closed_within(WAIT).await,
        "bob's socket is closed once he is out"
    );
    let refused = ChatClient::try_connect_as(&host.base, "ada-room", None, Some(&bob_key)).await;
    assert!(refused.is_err(), "bob, taken out, cannot reopen it");

    // A conversation the service started belongs to no user: Ada is kept out
    // until the service lets her in.
    let mut service_socket =
        ChatClient::try_connect_as(&host.base, "lobby", None, Some(&admin_token()))
            .await
            .expect("the service opens the lobby");
    service_socket.send("welcome").await;
    service_socket
        .next(WAIT)
        .await
        .expect("the service's message");
    let refused = ChatClient::try_connect_as(&host.base, "lobby", None, Some(&ada_key)).await;
    assert!(
        refused.is_err(),
        "ada cannot claim a conversation that exists"
    );
    let (status, reply) = service
        .put(
            &host.url("/api/conversations/lobby/members/ada"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let (status, page) = ada
        .get(&host.url("/api/conversations/lobby/messages"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["frames"][0]["text"], "welcome", "{page}");
}

/// A bot answer's relay is recorded before its job is queued (so an instance
/// dying in between loses no answer): a relay whose job comes late, after
/// the follower's quiet period, still relays the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_recorded_before_its_job_is_queued_relays_the_whole_answer() {
    let redis = Redis::start();
    let stub = stub().await;
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config: "[sessions]\nping_interval_ms = 100\n".into(),
            ..HostOptions::default()
        },
    );
    let mut listener = ChatClient::connect(&host.base, "late-room", None).await;
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut store = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let () = redis::cmd("HSET")
        .arg("chat:relays")
        .arg("late-bot")
        .arg("late-room")
        .query_async(&mut store)
        .await
        .expect("the relay is recorded");
    // An instance takes the relay, and many quiet periods pass before the
    // job is queued.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut taken = false;
    while !taken && tokio::time::Instant::now() < deadline {
        taken = redis::cmd("EXISTS")
            .arg("chat:relay_lease:late-bot")
            .query_async(&mut store)
            .await
            .expect("redis answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(taken, "an instance takes the relay");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (status, reply) = Api::default()
        .post(
            &host.url("/api/chat"),
            &serde_json::json!({"userId": "u", "prompt": "hello late", "jobId": "late-bot"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let frames = listener
        .until(WAIT, |frame| is_answer_end(frame, "late-bot"))
        .await;
    assert_eq!(
        frames.last().map(|frame| frame["event"].clone()),
        Some(Value::from("task_completed")),
        "{frames:#?}"
    );
    assert_eq!(
        streamed_text(&frames, "late-bot"),
        expected_chat_response("hello late", 0),
        "{frames:#?}"
    );
}
