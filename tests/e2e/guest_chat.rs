//! The built-in `chat` guest (guest/chat) tested through the harness: the
//! compiled component in the production sandbox, with scripted model replies.

use crate::support::built_in_harness;
use serde_json::{Value, json};
use spool_harness::{Harness, Reply, Role};

fn chat() -> Harness {
    built_in_harness("chat")
}

#[test]
fn priorities_1_to_10_map_to_low_normal_high() {
    let chat = chat();
    for priority in 1..=10u8 {
        let expected = match priority {
            1..=3 => "low",
            4..=7 => "normal",
            _ => "high",
        };
        for tier in ["", "standard"] {
            let run = chat.admit(
                chat.job(json!({"prompt": "hi"}))
                    .priority(priority)
                    .user_tier(tier),
            );
            assert_eq!(
                run.decision(),
                (expected.to_owned(), priority),
                "priority {priority}, tier {tier:?}"
            );
        }
    }
}

#[test]
fn vip_users_are_always_high_and_keep_their_score() {
    let chat = chat();
    for priority in [1, 3, 5, 10] {
        for tier in ["vip", "VIP", " Vip "] {
            let run = chat.admit(
                chat.job(json!({"prompt": "hi"}))
                    .priority(priority)
                    .user_tier(tier),
            );
            assert_eq!(
                run.decision(),
                ("high".to_owned(), priority),
                "tier {tier:?}"
            );
        }
    }
}

/// Design A's rule: paying/VIP users high, ordinary normal, new or inactive
/// users low, named or on design A's 0/1/2 scale, whatever number was asked.
#[test]
fn design_a_user_classes_pick_the_class() {
    let chat = chat();
    let classes = [
        ("paying", "high"),
        ("premium", "high"),
        ("2", "high"),
        ("1", "normal"),
        ("new", "low"),
        ("inactive", "low"),
        ("0", "low"),
    ];
    for (tier, expected) in classes {
        for priority in [1, 5, 10] {
            let run = chat.admit(
                chat.job(json!({"prompt": "hi"}))
                    .priority(priority)
                    .user_tier(tier),
            );
            assert_eq!(
                run.decision(),
                (expected.to_owned(), priority),
                "tier {tier:?}, priority {priority}"
            );
        }
    }
}

#[test]
fn admit_refuses_a_payload_without_a_prompt() {
    let chat = chat();
    let run = chat.admit(chat.job(json!({"conversationHistory": []})));
    assert_eq!(
        run.refused(),
        Some("payload.prompt must be a non-empty string")
    );
}

fn messages(run: &spool_harness::Run) -> Vec<(String, String)> {
    run.returned()["messages"]
        .as_array()
        .expect("a request has messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn prompt_puts_the_system_prompt_first_and_the_user_prompt_last() {
    let chat = chat();
    let job = chat
        .job(json!({"prompt": "and now?"}))
        .history(Role::User, "first question")
        .history(Role::Assistant, "first answer");
    let run = chat.shape_prompt(job);
    let messages = messages(&run);
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert_eq!(messages[0].0, "system");
    assert!(!messages[0].1.is_empty());
    assert_eq!(
        messages[1],
        ("user".to_owned(), "first question".to_owned())
    );
    assert_eq!(
        messages[2],
        ("assistant".to_owned(), "first answer".to_owned())
    );
    assert_eq!(messages[3], ("user".to_owned(), "and now?".to_owned()));
    assert_eq!(run.returned()["model"], Value::Null);
}

#[test]
fn history_is_trimmed_to_the_budget_oldest_first() {
    let chat = chat();
    // Four turns of 10 characters; a budget of 25 keeps the newest two.
    let mut job =
        chat.job(json!({"prompt": "next", "historyBudgetChars": 25, "system": "Be terse."}));
    for (i, role) in [Role::User, Role::Assistant, Role::User, Role::Assistant]
        .into_iter()
        .enumerate()
    {
        job = job.history(role, &format!("turn-{i}----"));
    }
    let messages = messages(&chat.shape_prompt(job));
    let contents: Vec<&str> = messages.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(contents, ["Be terse.", "turn-2----", "turn-3----", "next"]);
}

#[test]
fn content_blocks_code_with_language_json_thinking_and_text() {
    let chat = chat();
    let answer = "<think>The user wants code.</think>Here it is:\n```rust\nfn main() {}\n```\nAnd data:\n```json\n{\"a\": [1, 2]}\n```\nDone.";
    let run = chat.parse_content(answer);
    assert_eq!(
        run.returned(),
        &json!([
            {"type": "thinking", "text": "The user wants code."},
            {"type": "text", "text": "Here it is:"},
            {"type": "code", "language": "rust", "code": "fn main() {}"},
            {"type": "text", "text": "And data:"},
            {"type": "json", "json": {"a": [1, 2]}},
            {"type": "text", "text": "Done."},
        ])
    );
    let plain = chat.parse_content("  just words\n");
    assert_eq!(
        plain.returned(),
        &json!([{"type": "text", "text": "just words"}])
    );
    let broken_json = chat.parse_content("```json\n{oops\n```");
    assert_eq!(
        broken_json.returned(),
        &json!([{"type": "code", "language": "json", "code": "{oops"}])
    );
}

#[test]
fn handle_calls_the_model_once_and_returns_its_answer_as_blocks() {
    let chat = chat();
    let job = chat
        .job(json!({"prompt": "show me", "conversationHistory": [{"role": "user", "content": "hi"}], "maxTokens": 64}))
        .reply(Reply::text("Sure:\n```sh\nls\n```"));
    let run = chat.handle(job);
    assert_eq!(run.result()["response"], "Sure:\n```sh\nls\n```");
    assert_eq!(
        run.blocks(),
        [
            json!({"type": "text", "text": "Sure:"}),
            json!({"type": "code", "language": "sh", "code": "ls"})
        ]
    );
    assert_eq!(
        run.event_types(),
        [
            "task_progress",
            "task_progress",
            "text_delta",
            "task_progress"
        ]
    );
    let requests = run.chat_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["params"]["max_tokens"], 64);
    assert_eq!(
        requests[0]["messages"][1],
        json!({"role": "user", "content": "hi"})
    );
    assert!(run.logs().iter().any(|l| {
        l["message"]
            .as_str()
            .unwrap_or_default()
            .contains("1 of 1 history turns sent")
    }));
}

#[test]
fn model_errors_become_retries_or_rejections() {
    let chat = chat();
    let run = chat.handle(
        chat.job(json!({"prompt": "x"}))
            .reply(Reply::rate_limited(Some(1500))),
    );
    assert_eq!(
        run.retry(),
        Some(("model rate-limited".to_owned(), Some(1500)))
    );

    let run = chat.handle(
        chat.job(json!({"prompt": "x"}))
            .reply(Reply::unavailable("502 Bad Gateway")),
    );
    assert_eq!(run.retry(), Some(("502 Bad Gateway".to_owned(), None)));

    let run = chat.handle(
        chat.job(json!({"prompt": "x"}))
            .reply(Reply::rejected(400, "unknown model")),
    );
    assert_eq!(run.rejected(), Some("400: unknown model"));
}

/// Design A's bot kept a short-term memory: turns that no longer fit the
/// history budget are embedded with the prompt, and the closest one comes
/// back as a system note, through the host's (paced, batched, cached) embed.
#[test]
fn older_turns_closest_to_the_prompt_are_recalled_by_embedding() {
    let chat = chat();
    // A budget that keeps only the newest two turns (10 characters each).
    let job = chat.job(json!({
        "prompt": "what is my cat called?",
        "historyBudgetChars": 20,
        "recallTurns": 1,
        "conversationHistory": [
            {"role": "user", "content": "my cat is called Tom"},
            {"role": "assistant", "content": "what a nice name"},
            {"role": "user", "content": "it rains today"},
            {"role": "user", "content": "0123456789"},
            {"role": "assistant", "content": "abcdefghij"},
        ],
    }));
    // The prompt, then the three dropped turns: the cat turn is closest.
    let job = job
        .reply(Reply::embeddings(vec![
            vec![1.0, 0.0],
            vec![0.9, 0.1],
            vec![0.0, 1.0],
            vec![-1.0, 0.2],
        ]))
        .reply(Reply::text("Tom."));
    let run = chat.handle(job);
    assert_eq!(run.result()["response"], "Tom.", "{:?}", run.report());
    let embedded = &run.model_requests()[0];
    assert_eq!(
        embedded["texts"],
        json!([
            "what is my cat called?",
            "my cat is called Tom",
            "what a nice name",
            "it rains today"
        ]),
        "{embedded}"
    );
    let request = &run.chat_requests()[0];
    let messages = request["messages"].as_array().expect("messages");
    let contents: Vec<&str> = messages
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        contents.len(),
        5,
        "system, recall, 2 recent turns, prompt: {contents:?}"
    );
    assert_eq!(messages[1]["role"], "system");
    assert!(
        contents[1].ends_with("\n- user: my cat is called Tom"),
        "{contents:?}"
    );
    assert_eq!(
        &contents[2..],
        ["0123456789", "abcdefghij", "what is my cat called?"]
    );
}

#[test]
fn a_failed_embed_call_still_gets_an_answer_without_memory() {
    let chat = chat();
    let job = chat
        .job(json!({"prompt": "and now?", "historyBudgetChars": 0,
            "conversationHistory": [{"role": "user", "content": "long ago"}]}))
        .reply(Reply::unavailable("embedding backend down"))
        .reply(Reply::text("Fine."));
    let run = chat.handle(job);
    assert_eq!(run.result()["response"], "Fine.", "{:?}", run.report());
    let request = &run.chat_requests()[0];
    assert_eq!(
        request["messages"].as_array().map(Vec::len),
        Some(2),
        "{request}"
    );
}
