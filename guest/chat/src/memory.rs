//! Short-term memory (design A's bot): the turns that no longer fit the
//! history budget are not simply lost. The prompt and those older turns are
//! embedded (through the host's paced, batched and cached `embed`), and the
//! ones closest in meaning to the prompt are recalled into the request.
//!
//! Owns which older turns are recalled and how they are worded; the plain
//! functions here are unit-tested on the host target. It must not call the
//! model itself: `handle` does, and carries on without memory if it fails.

use spool_sdk::chat::{Message, Role};

/// Older turns recalled unless the payload sets `recallTurns` (0: none).
pub const DEFAULT_RECALL: usize = 2;
/// How many of the newest dropped turns are candidates (one embed call).
pub const MAX_CANDIDATES: usize = 32;
/// Longest part of a turn that is embedded and recalled, in characters.
pub const MAX_RECALLED_CHARS: usize = 1_000;

/// The candidate turns (newest dropped turns first would be equally fair;
/// these are in conversation order), each cut to [`MAX_RECALLED_CHARS`].
pub fn candidates(dropped: &[Message]) -> Vec<Message> {
    let start = dropped.len().saturating_sub(MAX_CANDIDATES);
    dropped[start..]
        .iter()
        .filter(|turn| !turn.content.trim().is_empty())
        .map(|turn| {
            Message::new(
                turn.role,
                turn.content.chars().take(MAX_RECALLED_CHARS).collect::<String>(),
            )
        })
        .collect()
}

/// Cosine similarity; 0 for a zero vector or vectors of different lengths.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let norms = norm(a) * norm(b);
    if norms == 0.0 { 0.0 } else { dot / norms }
}

/// The indexes of the `keep` candidates closest to the prompt, in
/// conversation order. `prompt` is the prompt's vector, `turns` one per candidate.
pub fn closest(prompt: &[f32], turns: &[Vec<f32>], keep: usize) -> Vec<usize> {
    let mut scored: Vec<(usize, f32)> = turns
        .iter()
        .enumerate()
        .map(|(index, vector)| (index, cosine(prompt, vector)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<usize> = scored.into_iter().take(keep).map(|(index, _)| index).collect();
    chosen.sort_unstable();
    chosen
}

/// The system message that carries recalled turns to the model.
pub fn recall_message(recalled: &[&Message]) -> Message {
    let mut text = String::from("Earlier in this conversation (recalled as relevant):");
    for turn in recalled {
        let who = match turn.role {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Tool => "tool",
        };
        text.push_str(&format!("\n- {who}: {}", turn.content));
    }
    Message::new(Role::System, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_turns_are_recalled_in_conversation_order() {
        let prompt = [1.0, 0.0];
        let turns = vec![vec![0.0, 1.0], vec![0.9, 0.1], vec![-1.0, 0.0], vec![1.0, 0.05]];
        assert_eq!(closest(&prompt, &turns, 2), [1, 3]);
        assert_eq!(closest(&prompt, &turns, 0), Vec::<usize>::new());
        assert_eq!(closest(&prompt, &turns, 10), [0, 1, 2, 3]);
    }

    #[test]
    fn cosine_of_degenerate_vectors_is_zero() {
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[2.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn candidates_are_the_newest_non_blank_turns_cut_short() {
        let mut dropped: Vec<Message> = (0..40).map(|i| Message::new(Role::User, format!("turn {i}"))).collect();
        dropped.push(Message::new(Role::Assistant, " "));
        dropped.push(Message::new(Role::Assistant, "x".repeat(5_000)));
        let chosen = candidates(&dropped);
        assert_eq!(chosen.len(), MAX_CANDIDATES - 1, "the blank turn is left out");
        assert_eq!(chosen[0].content, "turn 10");
        assert_eq!(
            chosen.last().map(|turn| turn.content.chars().count()),
            Some(MAX_RECALLED_CHARS)
        );
    }

    #[test]
    fn the_recall_message_names_who_said_what() {
        let turns = [
            Message::new(Role::User, "my cat is Tom"),
            Message::new(Role::Assistant, "nice"),
        ];
        let message = recall_message(&[&turns[0], &turns[1]]);
        assert_eq!(message.role, Role::System);
        assert!(
            message.content.ends_with("\n- user: my cat is Tom\n- assistant: nice"),
            "{}",
            message.content
        );
    }
}
