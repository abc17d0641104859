//! Prompt shaping: the rule that turns a payload and its conversation history
//! into the request sent to the model.
//!
//! Owns what the model is sent: the system prompt, how much history fits and
//! the order of the turns. It must not check payloads; [`crate::payload`] has
//! done that before a payload gets here.

use spool_sdk::chat::{Message, Request, Role};

use crate::payload::Payload;

/// The system prompt used unless the payload brings its own `system` string.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant. Answer concisely.";

/// How many characters of history content are kept unless the payload sets
/// `historyBudgetChars`.
pub const DEFAULT_HISTORY_BUDGET: usize = 8_000;

/// Builds the request for a chat job: the system prompt, then as much recent
/// history as fits the budget (see [`recent_within`]), then the user's prompt.
pub fn shape(payload: &Payload, history: &[Message]) -> Request {
    let system = payload.system.as_deref().unwrap_or(SYSTEM_PROMPT);
    let budget = payload.history_budget.unwrap_or(DEFAULT_HISTORY_BUDGET);
    let recent = recent_within(history, budget);

    let mut messages = Vec::with_capacity(recent.len() + 2);
    messages.push(Message::new(Role::System, system));
    messages.extend_from_slice(recent);
    messages.push(Message::new(Role::User, payload.prompt.as_str()));

    Request {
        model: payload.model.clone(),
        temperature: payload.temperature,
        max_tokens: payload.max_tokens,
        ..Request::new(messages)
    }
}

/// The most recent turns of `history` (oldest first) whose contents add up to
/// at most `budget` characters.
///
/// Turns are taken newest first and never split; the first turn that does not
/// fit ends the walk, so what is kept is always an unbroken tail of the
/// conversation (a turn bigger than the whole budget drops itself and every
/// older turn).
pub fn recent_within(history: &[Message], budget: usize) -> &[Message] {
    let mut used = 0;
    let mut start = history.len();
    for (index, message) in history.iter().enumerate().rev() {
        used += message.content.chars().count();
        if used > budget {
            break;
        }
        start = index;
    }
    &history[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(prompt: &str) -> Payload {
        Payload {
            prompt: prompt.to_owned(),
            ..Payload::default()
        }
    }

    /// A conversation whose turn `i` has content of `sizes[i]` characters.
    fn history(sizes: &[usize]) -> Vec<Message> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let role = if i % 2 == 0 { Role::User } else { Role::Assistant };
                Message::new(role, format!("{i}").repeat(size))
            })
            .collect()
    }

    #[test]
    fn system_first_history_in_order_prompt_last() {
        let turns = history(&[3, 3, 3]);
        let request = shape(&payload("and now?"), &turns);

        assert_eq!(
            request.messages.first(),
            Some(&Message::new(Role::System, SYSTEM_PROMPT))
        );
        assert_eq!(&request.messages[1..4], &turns[..]);
        assert_eq!(request.messages.last(), Some(&Message::new(Role::User, "and now?")));
        assert_eq!(request.model, None);
        assert_eq!((request.temperature, request.max_tokens), (None, None));
    }

    #[test]
    fn oldest_turns_are_dropped_first() {
        let turns = history(&[4, 4, 4, 4]);
        assert_eq!(recent_within(&turns, 12), &turns[1..]);
        assert_eq!(recent_within(&turns, 11), &turns[2..]);
        assert_eq!(recent_within(&turns, 16), &turns[..]);
        assert!(recent_within(&turns, 0).is_empty());
        assert!(recent_within(&[], 100).is_empty());
    }

    #[test]
    fn a_turn_bigger_than_the_budget_is_dropped_with_everything_older() {
        let turns = history(&[2, 50, 2, 2]);
        assert_eq!(recent_within(&turns, 10), &turns[2..]);

        let newest_too_big = history(&[2, 2, 50]);
        assert!(recent_within(&newest_too_big, 10).is_empty());
    }

    #[test]
    fn budget_counts_characters_not_bytes() {
        let turns = vec![Message::new(Role::User, "ééé"), Message::new(Role::Assistant, "ééé")];
        assert_eq!(recent_within(&turns, 6), &turns[..]);
    }

    #[test]
    fn payload_overrides_system_budget_model_and_params() {
        let turns = history(&[5, 5, 5]);
        let payload = Payload {
            system: Some("Be terse.".to_owned()),
            history_budget: Some(10),
            model: Some("llama3.2".to_owned()),
            temperature: Some(0.2),
            max_tokens: Some(64),
            ..payload("hi")
        };
        let request = shape(&payload, &turns);

        assert_eq!(request.messages[0], Message::new(Role::System, "Be terse."));
        assert_eq!(&request.messages[1..3], &turns[1..]);
        assert_eq!(request.messages.len(), 4);
        assert_eq!(request.model.as_deref(), Some("llama3.2"));
        assert_eq!((request.temperature, request.max_tokens), (Some(0.2), Some(64)));
    }
}
