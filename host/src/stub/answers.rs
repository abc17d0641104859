//! The stub's deterministic answers: chat text, stream pieces, token counts and
//! embeddings (see the module map in `stub/mod.rs` for the exact forms tests rely on).

use spool_core::models::{ChatMessage, Role};

pub const EMBEDDING_DIM: usize = 8;

/// The stub's chat answer for `messages` sent to `model`.
pub fn answer(model: &str, messages: &[ChatMessage]) -> String {
    let last = messages
        .iter()
        .rev()
        .find(|message| message.role == Role::User);
    let last = last.map_or("", |message| message.content.as_str());
    format!("[{model}] {} messages; you said: {last}", messages.len())
}

/// The stub's embedding: `EMBEDDING_DIM` values in [-1, 1). With `s` = FNV-1a-64 of the
/// text's UTF-8 bytes and `z_i` the i-th output (from 1) of SplitMix64 seeded with `s`,
/// `v[i-1] = (z_i >> 40) / 2^23 - 1`, exact in f32 and stable everywhere.
pub fn embedding(text: &str) -> Vec<f32> {
    let mut state = fnv1a64(text.as_bytes());
    (0..EMBEDDING_DIM)
        .map(|_| (splitmix64(&mut state) >> 40) as f32 / (1u32 << 23) as f32 - 1.0)
        .collect()
}

/// How the stub streams `text`: words with their trailing whitespace.
pub fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let (mut piece_has_word, mut after_space) = (false, false);
    for (index, character) in text.char_indices() {
        let is_space = character.is_whitespace();
        if piece_has_word && after_space && !is_space {
            pieces.push(&text[start..index]);
            start = index;
        }
        piece_has_word |= !is_space;
        after_space = is_space;
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

pub(super) fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_names_model_count_and_last_user_message() {
        let messages = [
            ChatMessage::new(Role::User, "first"),
            ChatMessage::new(Role::User, "second"),
            ChatMessage::new(Role::Assistant, "reply"),
        ];
        assert_eq!(answer("m", &messages), "[m] 3 messages; you said: second");
        assert_eq!(answer("m", &messages[2..]), "[m] 1 messages; you said: ");
    }

    #[test]
    fn pieces_split_at_words_and_rejoin() {
        assert_eq!(word_pieces(" a  b\nc "), [" a  ", "b\n", "c "]);
        assert!(word_pieces("").is_empty());
        let text = answer("m", &[ChatMessage::new(Role::User, "héllo 🌍\twörld")]);
        assert_eq!(word_pieces(&text).concat(), text);
    }

    #[test]
    fn embedding_is_stable_and_bounded() {
        let vector = embedding("hello");
        assert_eq!(vector.len(), EMBEDDING_DIM);
        assert!(
            vector.iter().all(|value| (-1.0..1.0).contains(value)),
            "{vector:?}"
        );
        assert_eq!(vector, embedding("hello"));
        assert_ne!(vector, embedding("hellp"));
        // Pins the formula: FNV-1a-64("") is 0xcbf29ce484222325.
        let mut state = 0xcbf2_9ce4_8422_2325;
        assert_eq!(
            embedding("")[0],
            (splitmix64(&mut state) >> 40) as f32 / 8_388_608.0 - 1.0
        );
    }
}
