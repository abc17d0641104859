//! API keys and what they allow. A key is a random secret shown once when it
//! is created; Redis keeps only its SHA-256, with its role and, for a key
//! bound to a tenant, the user and tier every request made with it acts as.
//!
//! Keys: `spool:keys` (hash: key id -> record JSON) and `spool:keys:by_hash`
//! (hash: SHA-256 hex -> key id). Owns those keys and the [`Role`] order; how
//! a request presents a key (header, cookie) is the API's business.

use crate::connection::RedisConnection;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const ANONYMOUS: &str = "anonymous";
/// Every key starts so, which makes a leaked one easy to find in logs and code.
const KEY_PREFIX: &str = "spool_";

/// What a key may do; each role may do everything the ones below it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queue statistics and limits.
    Reader,
    /// Submit jobs, start tasks, read and stream (its own) jobs and sessions.
    Submitter,
    /// Everything: deploys, rollbacks, queue control, dead letters, keys.
    Admin,
}

impl Role {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "reader" => Some(Self::Reader),
            "submitter" => Some(Self::Submitter),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Submitter => "submitter",
            Self::Admin => "admin",
        }
    }
}

/// Who a request is, as its key says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The key's id (`local` for the operator's local token, `anonymous` for
    /// an unauthenticated request where that is allowed).
    pub key_id: String,
    pub role: Role,
    /// A key bound to a tenant acts as this user, whatever a body says, and
    /// sees only this user's jobs and sessions.
    pub user: Option<Tenant>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    pub user_id: String,
    /// The tier the priority rule sees (e.g. `vip`); empty for none.
    #[serde(default)]
    pub tier: String,
}

impl Identity {
    pub fn local_admin() -> Self {
        Self {
            key_id: "local".into(),
            role: Role::Admin,
            user: None,
        }
    }

    /// A request without a key, where the API is open (loopback, no keys).
    pub fn anonymous() -> Self {
        Self {
            key_id: ANONYMOUS.into(),
            role: Role::Submitter,
            user: None,
        }
    }

    /// No key was presented (so a refusal asks for one: 401, not 403).
    pub fn is_anonymous(&self) -> bool {
        self.key_id == ANONYMOUS
    }

    pub fn may(&self, needed: Role) -> bool {
        self.role >= needed
    }

    /// Whether this identity may see a job or session owned by `user_id`.
    pub fn owns(&self, user_id: &str) -> bool {
        self.user
            .as_ref()
            .is_none_or(|tenant| tenant.user_id == user_id)
    }
}

/// A key as stored (without its secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub id: String,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Tenant>,
    /// What it is for, as its creator said.
    #[serde(default)]
    pub name: String,
    pub created_at: u64,
}

impl KeyRecord {
    fn identity(&self) -> Identity {
        Identity {
            key_id: self.id.clone(),
            role: self.role,
            user: self.user.clone(),
        }
    }
}

/// A key just created: the secret is in `key`, and nowhere else.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewKey {
    #[serde(flatten)]
    pub record: KeyRecord,
    pub key: String,
}

/// The SHA-256 of a presented key, as stored.
pub fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh secret: 256 random bits.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{KEY_PREFIX}{hex}"))
}

/// The keys in one Redis. Cheap to clone.
#[derive(Clone)]
pub struct Keys {
    redis: RedisConnection,
    records: &'static str,
    by_hash: &'static str,
}

impl Keys {
    pub fn new(redis: RedisConnection) -> Self {
        // The records and the index are written together (one MULTI): on a
        // Redis Cluster both carry one hash tag.
        let (records, by_hash) = if redis.is_cluster() {
            ("spool:{keys}", "spool:{keys}:by_hash")
        } else {
            ("spool:keys", "spool:keys:by_hash")
        };
        Self {
            redis,
            records,
            by_hash,
        }
    }

    /// Creates a key; its secret is returned once and never stored.
    pub async fn create(
        &self,
        role: Role,
        user: Option<Tenant>,
        name: &str,
    ) -> anyhow::Result<NewKey> {
        let key = new_secret().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let record = KeyRecord {
            id: uuid::Uuid::now_v7().simple().to_string()[20..].to_owned(),
            role,
            user,
            name: name.to_owned(),
            created_at: crate::queue::now_ms(),
        };
        redis::pipe()
            .atomic()
            .hset(self.records, &record.id, serde_json::to_string(&record)?)
            .hset(self.by_hash, key_hash(&key), &record.id)
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        Ok(NewKey { record, key })
    }

    /// Who a presented key is; `None` for an unknown or revoked key.
    pub async fn identify(&self, key: &str) -> redis::RedisResult<Option<Identity>> {
        let mut redis = self.redis.clone();
        let Some(id): Option<String> = redis.hget(self.by_hash, key_hash(key)).await? else {
            return Ok(None);
        };
        let record: Option<String> = redis.hget(self.records, &id).await?;
        Ok(record
            .and_then(|json| serde_json::from_str::<KeyRecord>(&json).ok())
            .map(|record| record.identity()))
    }

    pub async fn list(&self) -> redis::RedisResult<Vec<KeyRecord>> {
        let all: Vec<(String, String)> = self.redis.clone().hgetall(self.records).await?;
        let mut records: Vec<KeyRecord> = all
            .into_iter()
            .filter_map(|(_, json)| serde_json::from_str(&json).ok())
            .collect();
        records.sort_by_key(|r| r.created_at);
        Ok(records)
    }

    /// Whether any key exists.
    pub async fn any(&self) -> redis::RedisResult<bool> {
        let count: u64 = self.redis.clone().hlen(self.records).await?;
        Ok(count > 0)
    }

    /// Revokes a key by id; false when there is no such key.
    pub async fn revoke(&self, id: &str) -> redis::RedisResult<bool> {
        let mut redis = self.redis.clone();
        let removed: u64 = redis.hdel(self.records, id).await?;
        // The hash entry goes with it: a scan of the small reverse index.
        let all: Vec<(String, String)> = redis.hgetall(self.by_hash).await?;
        for (hash, key_id) in all {
            if key_id == id {
                redis.hdel::<_, _, ()>(self.by_hash, hash).await?;
            }
        }
        Ok(removed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_tenants_see_only_their_own() {
        assert!(Role::Admin > Role::Submitter && Role::Submitter > Role::Reader);
        let bound = Identity {
            key_id: "k".into(),
            role: Role::Submitter,
            user: Some(Tenant {
                user_id: "ada".into(),
                tier: String::new(),
            }),
        };
        assert!(bound.may(Role::Reader) && bound.may(Role::Submitter) && !bound.may(Role::Admin));
        assert!(bound.owns("ada") && !bound.owns("bob"));
        assert!(Identity::anonymous().owns("anyone"));
    }

    #[test]
    fn secrets_are_long_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_secret().expect("random"), new_secret().expect("random"));
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_eq!(key_hash(&a).len(), 64);
        assert!(!key_hash(&a).contains(&a[KEY_PREFIX.len()..]));
    }
}
