//! The web console in a real browser (headless Chromium through chromedriver):
//! each must-show scenario of issue 19 against a real `spool serve`, Redis and
//! the stub model, acting only through the page. The three chat-page bugs of
//! the old `/` each have a test here that the old page fails.

use serde_json::{Value, json};
use spool::stub::Fault;

use crate::browser::Browser;
use crate::reliability::{WAIT, submit_chat, wait_for_state};
use crate::support::*;

const ECHO_V1: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_v1.wasm"));
const ECHO_V2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_v2.wasm"));

/// A chat queue that retries quickly.
const CHAT_RETRIES: &str = "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 3\nbackoff_ms = 50\n";

async fn console(config: &str) -> (Stack, Browser) {
    let stack = Stack::start(HostOptions {
        config: config.into(),
        ..Default::default()
    })
    .await;
    let browser = Browser::start().await;
    browser.log_in(&stack.host.base, &admin_token()).await;
    (stack, browser)
}

fn js_string(text: &str) -> String {
    Value::String(text.into()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_console_shows_only_the_key_prompt() {
    let stack = Stack::start(HostOptions::default()).await;
    let browser = Browser::start().await;
    browser.goto(&stack.host.url("/#/queues")).await;
    browser
        .wait_for("the key prompt", "!document.getElementById('login').hidden")
        .await;
    let shown = |script: &'static str| browser.run(script, vec![]);
    assert_eq!(
        shown("return document.getElementById('shell').hidden && document.getElementById('page').childElementCount;").await,
        json!(0),
        "no page is rendered behind the prompt"
    );
    // A wrong key is refused and the prompt stays alone.
    browser.type_into("#key", "not-a-key").await;
    browser.click("#login-submit").await;
    let error = browser
        .wait_for(
            "the refusal",
            "document.getElementById('login-error').textContent",
        )
        .await;
    assert!(error.as_str().unwrap_or("").contains("unknown"), "{error}");
    assert_eq!(
        shown("return document.getElementById('shell').hidden;").await,
        json!(true)
    );
    // Nothing but the login was asked of the API.
    let calls = shown(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).pathname).filter(p => !p.startsWith('/console/'));",
    )
    .await;
    assert_eq!(calls, json!(["/api/login"]), "{calls}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_streams_live_and_a_retried_answer_shows_once() {
    let (stack, browser) = console(CHAT_RETRIES).await;
    // Attempt 1 streams a piece of its answer, then the model fails; attempt 2
    // answers in slow chunks, so the page is seen mid-stream.
    stack
        .stub
        .inject([Fault {
            midstream_error: Some("the model went away".into()),
            ..Fault::default()
        }])
        .expect("fault");
    stack.stub.set_timing(0, 120);
    browser
        .show("#/chat", "document.getElementById('prompt')")
        .await;
    // Every text the answer shows while it streams, as the user saw it.
    browser
        .run(
            "window.streamed = [];
             new MutationObserver(() => {
               const turn = document.querySelector('.turn.assistant');
               const text = turn && turn.dataset.state !== 'completed' && turn.querySelector('.answer').innerText;
               if (text && text !== window.streamed[window.streamed.length - 1]) window.streamed.push(text);
             }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true, attributes: true});",
            vec![],
        )
        .await;
    browser.type_into("#prompt", "tell me twice").await;
    browser.click("#send").await;
    let answer = "document.querySelector('.turn.assistant')";
    let expected = expected_chat_response("tell me twice", 0);
    browser
        .wait_for(
            "the finished answer",
            &format!("{answer}.dataset.state === 'completed'"),
        )
        .await;
    let text = browser
        .run(
            &format!("return {answer}.querySelector('.answer').innerText;"),
            vec![],
        )
        .await;
    let text = text.as_str().unwrap_or_default();
    assert_eq!(
        text.matches(&expected).count(),
        1,
        "the answer once: {text:?}"
    );
    assert_eq!(
        text.trim(),
        expected,
        "nothing of the failed attempt is left"
    );
    // While it streamed, the answer only ever grew towards the one answer:
    // attempt 2 started afresh instead of appending to attempt 1's piece.
    let streamed = browser.run("return window.streamed;", vec![]).await;
    let streamed: Vec<&str> = streamed
        .as_array()
        .map(|texts| texts.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(streamed.len() >= 2, "seen streaming: {streamed:?}");
    for text in &streamed {
        assert!(
            expected.starts_with(text.trim_end()),
            "{text:?} of {streamed:?}"
        );
    }
    let meta = browser
        .run(
            &format!("return {answer}.querySelector('.meta').innerText;"),
            vec![],
        )
        .await;
    assert!(meta.as_str().unwrap_or("").contains("chat"), "{meta}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_from_the_console_shows_cancelled_and_its_chat_stream_ends() {
    let (stack, browser) = console("").await;
    let Stack { host, api, .. } = &stack;
    let (status, _) = api
        .post(&host.url("/api/queues/chat/pause"), &json!({}))
        .await;
    assert_eq!(status, 200);
    // A job watched on the chat page and cancelled elsewhere: the page
    // shows it cancelled and stops following it (the old page kept
    // reconnecting to the ended stream).
    browser
        .show("#/chat", "document.getElementById('prompt')")
        .await;
    browser.type_into("#prompt", "never answered").await;
    browser.click("#send").await;
    let chat_job = browser
        .wait_for(
            "the chat job's id",
            "document.querySelector('.turn.assistant[data-job]')?.dataset.job",
        )
        .await;
    let chat_job = chat_job.as_str().expect("job id").to_owned();
    let (status, _) = api.delete(&host.url(&format!("/api/job/{chat_job}"))).await;
    assert_eq!(status, 200);
    browser
        .wait_for(
            "the cancelled chat turn",
            "document.querySelector('.turn.assistant').dataset.state === 'cancelled'",
        )
        .await;

    // A job cancelled with the console's own button.
    let (_, reply) = submit_chat(api, host, "also never answered").await;
    let id = reply["jobId"].as_str().expect("job id").to_owned();
    wait_for_state(api, host, &id, "waiting").await;
    // Found in the queue's waiting list, opened from there.
    let row = format!("#job-list tr[data-job='{id}']");
    browser
        .show(
            "#/jobs?queue=chat&state=waiting",
            &format!("document.querySelector({})", js_string(&row)),
        )
        .await;
    browser.click(&format!("{row} a")).await;
    browser
        .wait_for(
            "the job's page",
            "document.querySelector('#job-actions button')",
        )
        .await;
    browser.click("#job-actions button.danger").await;
    browser
        .wait_for(
            "the cancelled state",
            "document.querySelector('#job-summary [data-state=cancelled]')",
        )
        .await;
    browser
        .wait_for(
            "the event in the timeline",
            "document.querySelector('#timeline [data-event=task_cancelled]')",
        )
        .await;
    let (_, job) = api.get(&host.url(&format!("/api/job/{id}"))).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_is_replayed_from_the_console() {
    let config = "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 1\n";
    let (stack, browser) = console(config).await;
    let Stack {
        host, api, stub, ..
    } = &stack;
    stub.inject([Fault {
        status: Some(500),
        ..Fault::default()
    }])
    .expect("fault");
    let (_, reply) = submit_chat(api, host, "fail once").await;
    let id = reply["jobId"].as_str().expect("job id").to_owned();
    let job = api.wait_terminal(host, &id, WAIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    browser
        .show(
            "#/jobs?queue=chat&state=dead",
            &format!(
                "document.querySelector('#job-list tr[data-job={}]')",
                js_string(&id)
            ),
        )
        .await;
    browser
        .click(&format!(
            "#job-list tr[data-job='{id}'] input[type=checkbox]"
        ))
        .await;
    browser
        .run(
            "[...document.querySelectorAll('button')].find(b => b.textContent === 'Replay selected').click();",
            vec![],
        )
        .await;
    browser
        .wait_for(
            "the replay",
            "document.getElementById('jobs-status').textContent.includes('1 of 1 done')",
        )
        .await;
    let job = api.wait_terminal(host, &id, WAIT).await;
    assert_eq!(job["state"], "completed", "replayed and answered: {job}");
    browser
        .show(
            &format!("#/job/{id}"),
            "document.querySelector('#job-summary [data-state=completed]')",
        )
        .await;
    let attempts = browser
        .run(
            "return document.querySelectorAll('#attempts tr').length - 1;",
            vec![],
        )
        .await;
    let (_, detail) = api.get(&host.url(&format!("/api/job/{id}"))).await;
    let history = detail["attemptHistory"].as_array().map_or(0, Vec::len);
    assert_eq!(attempts, json!(history), "every attempt listed: {detail}");
    // The event timeline replays the failed attempt and the replayed answer.
    browser
        .wait_for(
            "the job's events",
            "document.querySelector('#timeline [data-event=task_failed]') && document.querySelector('#timeline [data-event=task_completed]')",
        )
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_version_is_deployed_by_upload_and_rolled_back() {
    let dir = tempfile::tempdir().expect("dir");
    let (v1, v2, bad) = (
        dir.path().join("echo_v1.wasm"),
        dir.path().join("echo_v2.wasm"),
        dir.path().join("not.wasm"),
    );
    std::fs::write(&v1, ECHO_V1).expect("write");
    std::fs::write(&v2, ECHO_V2).expect("write");
    std::fs::write(&bad, b"not a component").expect("write");
    let config = format!(
        "[handlers.echo]\npath = \"{}\"\n\n[queues.echo]\nhandler = \"echo\"\nmax_attempts = 1\n",
        v1.display()
    );
    let (stack, browser) = console(&config).await;
    let (version_1, version_2) = (
        spool_runtime::content_version(ECHO_V1),
        spool_runtime::content_version(ECHO_V2),
    );
    let card = "document.querySelector('[data-handler=echo]')";
    browser.show("#/handlers", card).await;
    assert_eq!(
        browser
            .run(&format!("return {card}.dataset.active;"), vec![])
            .await,
        json!(version_1)
    );
    // A file that is no component: the server's validation answer is shown.
    let upload = "[data-handler=echo] input[type=file]";
    let deploy = "document.querySelectorAll('[data-handler=echo] button')[0].click();";
    browser.type_into(upload, &bad.display().to_string()).await;
    browser.run(deploy, vec![]).await;
    let refusal = browser
        .wait_for(
            "the validation error",
            "document.querySelector('#handler-status.error')?.textContent",
        )
        .await;
    assert!(!refusal.as_str().unwrap_or("").is_empty(), "{refusal}");

    browser.type_into(upload, &v2.display().to_string()).await;
    browser.run(deploy, vec![]).await;
    browser
        .wait_for(
            "v2 active",
            &format!("{card}?.dataset.active === {}", js_string(&version_2)),
        )
        .await;
    let (_, status) = stack.api.get(&stack.host.url("/admin/handlers/echo")).await;
    assert_eq!(status["active"], version_2.as_str(), "{status}");

    browser
        .run(
            "document.querySelectorAll('[data-handler=echo] button')[1].click();",
            vec![],
        )
        .await;
    browser
        .wait_for(
            "v1 active again",
            &format!("{card}?.dataset.active === {}", js_string(&version_1)),
        )
        .await;
    let history = browser
        .run(&format!("return {card}.innerText;"), vec![])
        .await;
    assert!(
        history.as_str().unwrap_or("").contains("rollback"),
        "{history}"
    );
    let (_, status) = stack.api.get(&stack.host.url("/admin/handlers/echo")).await;
    assert_eq!(status["active"], version_1.as_str(), "{status}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_paused_and_resumed_from_the_console() {
    let (stack, browser) = console("").await;
    let row = "document.querySelector('#queues tr[data-queue=chat]')";
    browser.show("#/queues", row).await;
    let paused = |expected: bool| {
        let stack = &stack;
        async move {
            let (_, stats) = stack.api.get(&stack.host.url("/api/queue/stats")).await;
            assert_eq!(stats["queues"]["chat"]["paused"], expected, "{stats}");
        }
    };
    browser
        .click("#queues tr[data-queue=chat] button.pause")
        .await;
    browser
        .wait_for(
            "the paused row",
            &format!("{row}?.dataset.paused === 'true'"),
        )
        .await;
    paused(true).await;
    browser
        .click("#queues tr[data-queue=chat] button.resume")
        .await;
    browser
        .wait_for(
            "the resumed row",
            &format!("{row}?.dataset.paused === 'false'"),
        )
        .await;
    paused(false).await;
    browser.close().await;
}

/// One of each block type a client may post, and what its DOM must hold.
fn every_block() -> Vec<(Value, &'static str)> {
    let pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    vec![
        (
            json!({"type": "text", "text": "plain words"}),
            "div.block-text",
        ),
        (
            json!({"type": "markdown", "text": "# Title\n\n**bold** and `code`"}),
            "h1 + p > strong",
        ),
        (
            json!({"type": "html", "html": "<p class=\"kept\">safe</p><img src=x onerror=\"window.pwned=1\"><script>window.pwned=1</script>"}),
            "p.kept",
        ),
        (
            json!({"type": "code", "code": "fn main() {}", "language": "rust"}),
            "pre > code[data-language=rust]",
        ),
        (json!({"type": "json", "json": {"answer": 42}}), "pre"),
        (
            json!({"type": "thinking", "text": "hmm"}),
            "details > summary",
        ),
        (
            json!({"type": "image", "base64": pixel, "mimeType": "image/png", "caption": "a pixel"}),
            "figure > img[src^='data:image/png']",
        ),
        (
            json!({"type": "audio", "url": "http://127.0.0.1:9/a.mp3"}),
            "audio[controls]",
        ),
        (
            json!({"type": "video", "url": "http://127.0.0.1:9/v.mp4"}),
            "video[controls]",
        ),
        (
            json!({"type": "file", "base64": "AAAA", "name": "a.bin"}),
            "a[download='a.bin']",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_type_renders_in_a_session_message() {
    let (stack, browser) = console("").await;
    let Stack { host, api, .. } = &stack;
    let (status, session) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    assert_eq!(status, 201, "{session}");
    let sid = session["id"].as_str().expect("session id").to_owned();
    let blocks: Vec<Value> = every_block().into_iter().map(|(block, _)| block).collect();
    let (status, message) = api
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/messages")),
            &json!({"role": "assistant", "blocks": blocks}),
        )
        .await;
    assert_eq!(status, 201, "{message}");
    browser
        .show(
            &format!("#/sessions/{sid}"),
            "document.querySelector('#messages [data-message]')",
        )
        .await;
    for (block, selector) in every_block() {
        let kind = block["type"].as_str().expect("type");
        let found = browser
            .run(
                "return !!document.querySelector(`#messages .block[data-block-type=${arguments[0]}] ${arguments[1]}`);",
                vec![json!(kind), json!(selector)],
            )
            .await;
        assert_eq!(found, json!(true), "{kind} renders as `{selector}`");
    }
    // Sanitized: the script and the handler never ran or stayed.
    let unsafe_left = browser
        .run("return [!!window.pwned, !!document.querySelector('#messages script, #messages [onerror]')];", vec![])
        .await;
    assert_eq!(unsafe_left, json!([false, false]));
    // A placeholder (only a task makes one) renders with its description.
    let placeholder = browser
        .run_async(
            "const done = arguments[arguments.length - 1];
             import('/console/blocks.js').then(m => done(m.renderBlock({type: 'placeholder', taskId: 't1', description: 'drawing'}).outerHTML));",
        )
        .await;
    let placeholder = placeholder.as_str().unwrap_or_default();
    assert!(
        placeholder.contains("data-block-type=\"placeholder\"")
            && placeholder.contains("data-task-id=\"t1\"")
            && placeholder.contains("drawing"),
        "{placeholder}"
    );
    browser.close().await;
}

/// Writes a PNG of each console page to `docs/console/` (or `$SPOOL_SCREENSHOTS`),
/// over a host with a little of everything: finished, failed and dead jobs, a
/// session with every block type, a chat exchange. Run it with
/// `cargo test -p spool --test e2e -- --ignored console::screenshots`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes files; run on purpose to refresh docs/console"]
async fn screenshots() {
    let out = std::env::var_os("SPOOL_SCREENSHOTS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&out).expect("output dir");
    let config = "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 2\nbackoff_ms = 50\n";
    let stack = Stack::start(HostOptions {
        config: config.into(),
        ..Default::default()
    })
    .await;
    let Stack {
        host, api, stub, ..
    } = &stack;
    let browser = Browser::start().await;
    let shoot = |name: &'static str| {
        let (browser, out) = (&browser, &out);
        async move {
            let png = browser.screenshot().await;
            assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
            std::fs::write(out.join(format!("{name}.png")), png).expect("write screenshot");
        }
    };
    browser.goto(&host.url("/")).await;
    browser
        .wait_for("the key prompt", "!document.getElementById('login').hidden")
        .await;
    shoot("login").await;

    let mut ids = Vec::new();
    for prompt in [
        "What is a token bucket?",
        "Summarise Redis Streams",
        "Hello",
    ] {
        let (_, reply) = submit_chat(api, host, prompt).await;
        ids.push(reply["jobId"].as_str().expect("job id").to_owned());
    }
    for id in &ids {
        api.wait_terminal(host, id, WAIT).await;
    }
    stub.inject([Fault {
        status: Some(500),
        times: 2,
        ..Fault::default()
    }])
    .expect("fault");
    let (_, reply) = submit_chat(api, host, "this one fails").await;
    let dead = reply["jobId"].as_str().expect("job id").to_owned();
    api.wait_terminal(host, &dead, WAIT).await;
    let (_, session) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    let sid = session["id"].as_str().expect("session id").to_owned();
    let blocks: Vec<Value> = every_block().into_iter().map(|(block, _)| block).collect();
    api.post(
        &host.url(&format!("/api/v1/sessions/{sid}/messages")),
        &json!({"role": "assistant", "content": "", "blocks": blocks}),
    )
    .await;

    browser.log_in(&host.base, &admin_token()).await;
    browser
        .show(
            "#/queues",
            "document.querySelector('#queues tr[data-queue=chat]')",
        )
        .await;
    shoot("queues").await;
    browser
        .show(
            "#/jobs?queue=chat&state=completed",
            "document.querySelector('#job-list tr[data-job]')",
        )
        .await;
    shoot("jobs").await;
    browser
        .show(
            &format!("#/job/{dead}"),
            "document.querySelector('#timeline [data-event=task_failed]')",
        )
        .await;
    shoot("job-failed").await;
    browser
        .show(
            &format!("#/job/{}", ids[0]),
            "document.querySelector('#timeline [data-event=task_completed]')",
        )
        .await;
    shoot("job").await;
    browser
        .show(
            "#/handlers",
            "document.querySelector('[data-handler=chat]')",
        )
        .await;
    shoot("handlers").await;
    browser
        .show("#/limits", "document.querySelector('#charts section')")
        .await;
    shoot("limits").await;
    browser
        .show(
            &format!("#/sessions/{sid}"),
            "document.querySelector('#messages [data-message]')",
        )
        .await;
    shoot("session").await;
    browser
        .show("#/chat", "document.getElementById('prompt')")
        .await;
    browser
        .type_into("#prompt", "Explain back-off in one line")
        .await;
    browser.click("#send").await;
    browser
        .wait_for(
            "the answer",
            "document.querySelector('.turn.assistant')?.dataset.state === 'completed'",
        )
        .await;
    shoot("chat").await;
    browser.close().await;
}

/// The route behind the console's waiting, active and delayed lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_lists_its_waiting_active_and_delayed_jobs() {
    let config = "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 2\nbackoff_ms = 60000\n";
    let stack = Stack::start(HostOptions {
        config: config.into(),
        ..Default::default()
    })
    .await;
    let Stack {
        host, api, stub, ..
    } = &stack;
    let submit = |prompt: &'static str| async move {
        let (_, reply) = submit_chat(api, host, prompt).await;
        reply["jobId"].as_str().expect("job id").to_owned()
    };
    // Fails its first attempt and waits a minute for its retry.
    stub.inject([Fault {
        status: Some(500),
        ..Fault::default()
    }])
    .expect("fault");
    let delayed = submit("retried later").await;
    wait_for_state(api, host, &delayed, "delayed").await;
    // Runs for seconds.
    stub.set_timing(5000, 0);
    let active = submit("slow").await;
    wait_for_state(api, host, &active, "active").await;
    // Never claimed.
    let (status, _) = api
        .post(&host.url("/api/queues/chat/pause"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let waiting = submit("parked").await;
    for (state, id) in [
        ("waiting", &waiting),
        ("active", &active),
        ("delayed", &delayed),
    ] {
        let (status, list) = api
            .get(&host.url(&format!("/api/queues/chat/jobs?state={state}")))
            .await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["state"], state);
        let ids: Vec<&str> = list["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .filter_map(|job| job["id"].as_str())
            .collect();
        assert_eq!(ids, [id.as_str()], "{state}: {list}");
    }
    let (status, body) = api
        .get(&host.url("/api/queues/chat/jobs?state=completed"))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = api.get(&host.url("/api/queues/nope/jobs")).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_shows_its_messages_live() {
    let (stack, browser) = console("").await;
    browser
        .show(
            "#/conversation/room-7",
            "document.getElementById('conversation-status').textContent === 'connected'",
        )
        .await;
    browser
        .type_into("#frames + form input", "hello room")
        .await;
    browser.click("#frames + form button").await;
    let frame = browser
        .wait_for(
            "the message frame",
            "document.querySelector('#frames [data-frame]')?.innerText",
        )
        .await;
    assert!(
        frame.as_str().unwrap_or("").ends_with("hello room"),
        "{frame}"
    );
    // The same message is in the conversation's history.
    let (status, history) = stack
        .api
        .get(&stack.host.url("/api/conversations/room-7/messages"))
        .await;
    assert_eq!(status, 200, "{history}");
    assert!(history.to_string().contains("hello room"), "{history}");
    browser.close().await;
}

/// Issue 19's "promote a delayed job": from the job page (which also shows
/// the payload the job was submitted with) and in bulk from the delayed list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_are_promoted_from_the_console_and_run() {
    // A retry an hour away: only a promotion runs these jobs within the test.
    let config = "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 3\nbackoff_ms = 3600000\n";
    let (stack, browser) = console(config).await;
    let Stack {
        host, api, stub, ..
    } = &stack;
    let failure = Fault {
        status: Some(500),
        ..Fault::default()
    };
    stub.inject([failure.clone(), failure]).expect("fault");
    let mut delayed = Vec::new();
    for prompt in ["promoted from its page", "promoted in bulk"] {
        let (_, reply) = submit_chat(api, host, prompt).await;
        let id = reply["jobId"].as_str().expect("job id").to_owned();
        wait_for_state(api, host, &id, "delayed").await;
        delayed.push(id);
    }
    let (single, bulk) = (&delayed[0], &delayed[1]);

    browser
        .show(
            &format!("#/job/{single}"),
            "document.querySelector('#job-summary [data-state=delayed]')",
        )
        .await;
    let shown = browser
        .wait_for(
            "the payload",
            "document.getElementById('job-payload').textContent.includes('{')",
        )
        .await;
    assert_eq!(shown, json!(true));
    let payload = browser
        .run(
            "return JSON.parse(document.getElementById('job-payload').textContent);",
            vec![],
        )
        .await;
    assert_eq!(payload["prompt"], "promoted from its page", "{payload}");
    browser
        .run(
            "[...document.querySelectorAll('#job-actions button')].find(b => b.textContent === 'Promote').click();",
            vec![],
        )
        .await;
    browser
        .wait_for(
            "the promoted job's answer",
            "document.querySelector('#job-summary [data-state=completed]')",
        )
        .await;
    let job = api.wait_terminal(host, single, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");

    browser
        .show(
            "#/jobs?queue=chat&state=delayed",
            &format!(
                "document.querySelector('#job-list tr[data-job={}]')",
                js_string(bulk)
            ),
        )
        .await;
    browser
        .click(&format!(
            "#job-list tr[data-job='{bulk}'] input[type=checkbox]"
        ))
        .await;
    browser
        .run(
            "[...document.querySelectorAll('button')].find(b => b.textContent === 'Promote selected').click();",
            vec![],
        )
        .await;
    browser
        .wait_for(
            "the bulk promotion",
            "document.getElementById('jobs-status').textContent.includes('1 of 1 done')",
        )
        .await;
    let job = api.wait_terminal(host, bulk, WAIT).await;
    assert_eq!(
        job["state"], "completed",
        "ran long before its retry: {job}"
    );
    assert_eq!(job["attempts"], 2, "{job}");
    browser.close().await;
}
