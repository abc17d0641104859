//! The embedding cache: vectors in Redis under `spool:embed:{backend-id}:{sha256
//! of model and text}`, as little-endian f32 bytes, with a TTL. A hit skips the
//! limiter and the backend. The cache is an optimisation: when Redis fails, a
//! lookup is a miss and a store is skipped, never an error for the job.

use crate::connection::RedisConnection;
use sha2::Digest;

pub struct EmbeddingCache {
    redis: RedisConnection,
    prefix: String,
    ttl_secs: u64,
}

impl EmbeddingCache {
    pub fn new(redis: RedisConnection, backend_id: &str, ttl_secs: u64) -> Self {
        Self {
            redis,
            prefix: format!("spool:embed:{{{backend_id}}}:"),
            ttl_secs,
        }
    }

    fn key(&self, model: &str, text: &str) -> String {
        let mut hasher = sha2::Sha256::new();
        hasher.update(model.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}{digest}", self.prefix)
    }

    /// One entry per text: the cached vector or `None`. One round trip.
    pub async fn get_many(&self, model: &str, texts: &[String]) -> Vec<Option<Vec<f32>>> {
        if self.ttl_secs == 0 {
            return vec![None; texts.len()];
        }
        let keys: Vec<String> = texts.iter().map(|text| self.key(model, text)).collect();
        let found: redis::RedisResult<Vec<Option<Vec<u8>>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.redis.clone())
            .await;
        match found {
            Ok(values) if values.len() == texts.len() => values
                .into_iter()
                .map(|value| value.and_then(|bytes| decode(&bytes)))
                .collect(),
            Ok(_) => vec![None; texts.len()],
            Err(error) => {
                tracing::debug!(%error, "embedding cache lookup failed; treating as misses");
                vec![None; texts.len()]
            }
        }
    }

    /// Stores each text's vector with the TTL. One round trip.
    pub async fn put_many(&self, model: &str, texts: &[String], vectors: &[Vec<f32>]) {
        if self.ttl_secs == 0 || texts.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (text, vector) in texts.iter().zip(vectors) {
            pipe.cmd("SET")
                .arg(self.key(model, text))
                .arg(encode(vector))
                .arg("EX")
                .arg(self.ttl_secs)
                .ignore();
        }
        let stored: redis::RedisResult<()> = pipe.query_async(&mut self.redis.clone()).await;
        if let Err(error) = stored {
            tracing::debug!(%error, "could not store embeddings in the cache");
        }
    }
}

fn encode(vector: &[f32]) -> Vec<u8> {
    vector
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// `None` for bytes that are not a whole number of f32s (a foreign value).
fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn vectors_round_trip_through_bytes() {
        let vector = vec![0.5f32, -1.0, 3.25e-7, f32::MAX];
        assert_eq!(super::decode(&super::encode(&vector)), Some(vector));
        assert_eq!(super::decode(b"abc"), None);
        assert_eq!(super::decode(b""), None);
    }
}
