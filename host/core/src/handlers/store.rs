//! The handler registry in Redis: every handler's stored versions (component
//! bytes plus metadata), which one is active, the activation history, and which
//! version each running instance has switched to.
//!
//! Owns these keys and every write to them (versions are stored in one MULTI,
//! activations by one Lua script). It does not compile or validate components.
//!
//! Keys: `spool:handlers:active` (hash name -> version), `spool:handlers:generation`
//! (bumped by every activation), `spool:handler:{name}:versions` (hash version ->
//! metadata JSON), `spool:handler:{name}:component:{version}` (the bytes),
//! `spool:handler:{name}:history` (activations, newest first),
//! `spool:handler:{name}:pins` (zset version -> when an instance last held a
//! queue pin on it, ms), `spool:instances` (zset instance -> last heartbeat,
//! ms) and `spool:instance:{id}` (what it runs). On a Redis Cluster each
//! starts `spool:{registry}:` instead of `spool:`, one hash slot for all.
//!
//! Old versions are pruned (`prune.lua`) after each deploy: all but the
//! newest `registry.keep_versions`, the active one, the rollback target and
//! the pinned ones.
//! Channel `spool:handlers:changed` carries the generation of each activation.

use std::collections::{BTreeMap, HashMap};

use crate::connection::RedisConnection;
use redis::{AsyncCommands, Script, Value};
use serde::{Deserialize, Serialize};

/// Activations remembered per handler (rollback needs only the latest).
const HISTORY_KEPT: u32 = 100;
/// An instance that has not reported for this long is no longer counted.
pub const INSTANCE_LIVE_MS: u64 = 5_000;
/// Reports of instances silent this long are deleted.
const INSTANCE_FORGET_MS: u64 = 60_000;
/// A pin keeps its version from being pruned this long after an instance
/// last held it: an instance whose config pins a version may be down for a
/// while and must still find the version when it starts again.
pub const PIN_HOLD_MS: u64 = 7 * 24 * 3600 * 1000;

/// The registry's keys. An activation changes the active pointer, the
/// generation and a handler's history in one script, so on a Redis Cluster
/// they all carry one hash tag (`spool:{registry}:...`); one server keeps
/// the plain names.
#[derive(Clone, Copy)]
struct Keys {
    prefix: &'static str,
}

impl Keys {
    fn of(redis: &RedisConnection) -> Self {
        let prefix = if redis.is_cluster() {
            "spool:{registry}:"
        } else {
            "spool:"
        };
        Self { prefix }
    }
    /// Where each activation's generation is announced (a shard channel on
    /// a cluster: `publish.lua`).
    fn changed(self) -> String {
        format!("{}handlers:changed", self.prefix)
    }
    fn active(self) -> String {
        format!("{}handlers:active", self.prefix)
    }
    fn generation(self) -> String {
        format!("{}handlers:generation", self.prefix)
    }
    fn instances(self) -> String {
        format!("{}instances", self.prefix)
    }
    fn versions(self, name: &str) -> String {
        format!("{}handler:{name}:versions", self.prefix)
    }
    fn history(self, name: &str) -> String {
        format!("{}handler:{name}:history", self.prefix)
    }
    fn component(self, name: &str, version: &str) -> String {
        format!("{}{version}", self.component_prefix(name))
    }
    fn pins(self, name: &str) -> String {
        format!("{}handler:{name}:pins", self.prefix)
    }
    fn component_prefix(self, name: &str) -> String {
        format!("{}handler:{name}:component:", self.prefix)
    }
    fn instance(self, instance: &str) -> String {
        format!("{}instance:{instance}", self.prefix)
    }
}

/// What is known about one stored version.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct VersionMeta {
    /// First 12 hex digits of the SHA-256: the version id.
    pub version: String,
    pub sha256: String,
    pub size: usize,
    pub uploaded_at: u64,
    /// Who or what uploaded it: a user name from the CLI, `built-in`, `config`, `watch`.
    pub uploaded_by: String,
    /// The WIT world it was validated against.
    pub world: String,
}

/// One entry of a handler's activation history.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Activation {
    pub version: String,
    pub previous: Option<String>,
    pub at: u64,
    pub by: String,
    pub action: String,
    pub generation: u64,
}

/// How an activation request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Activated {
    Activated {
        previous: Option<String>,
        generation: u64,
    },
    /// The version was already active.
    Unchanged { generation: u64 },
    /// Seeding only: another version is active and stays so.
    Kept { active: String, generation: u64 },
    /// No such stored version.
    Missing,
}

/// What an instance last reported about itself.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    pub instance: String,
    pub last_seen: u64,
    /// The registry generation it has applied.
    pub generation: u64,
    /// When (its clock, ms) it applied that generation.
    pub switched_at: u64,
    /// Handler name -> the version its workers start jobs on.
    pub handlers: BTreeMap<String, String>,
}

/// An activation request.
pub struct ActivationRequest<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub now_ms: u64,
    pub by: &'a str,
    pub action: &'a str,
    /// Seeding: activate only when the handler has no active version.
    pub only_if_none: bool,
}

/// A version [`HandlerStore::prune`] deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pruned {
    pub version: String,
    pub sha256: String,
}

#[derive(Clone)]
pub struct HandlerStore {
    redis: RedisConnection,
    keys: Keys,
    activate: Script,
    prune: Script,
}

impl HandlerStore {
    pub fn new(redis: RedisConnection) -> Self {
        Self {
            keys: Keys::of(&redis),
            redis,
            activate: Script::new(concat!(
                include_str!("../queue/publish.lua"),
                include_str!("activate.lua")
            )),
            prune: Script::new(include_str!("prune.lua")),
        }
    }

    /// Records that this instance's queues pin these (handler, version)
    /// pairs, so that no instance prunes them (see [`PIN_HOLD_MS`]).
    pub async fn hold_pins(
        &self,
        pins: &[(String, String)],
        now_ms: u64,
    ) -> redis::RedisResult<()> {
        if pins.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (name, version) in pins {
            pipe.zadd(self.keys.pins(name), version, now_ms).ignore();
        }
        pipe.query_async(&mut self.redis.clone()).await
    }

    /// Deletes the versions of `name` beyond the newest `keep` that are not
    /// active, the rollback target or pinned; returns them. `keep` 0: none.
    pub async fn prune(
        &self,
        name: &str,
        keep: usize,
        now_ms: u64,
    ) -> redis::RedisResult<Vec<Pruned>> {
        if keep == 0 {
            return Ok(Vec::new());
        }
        let flat: Vec<String> = self
            .prune
            .key(self.keys.versions(name))
            .key(self.keys.active())
            .key(self.keys.pins(name))
            .key(self.keys.history(name))
            .arg(name)
            .arg(keep)
            .arg(self.keys.component_prefix(name))
            .arg(now_ms.saturating_sub(PIN_HOLD_MS))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(flat
            .chunks(2)
            .filter_map(|pair| match pair {
                [version, sha256] => Some(Pruned {
                    version: version.clone(),
                    sha256: sha256.clone(),
                }),
                _ => None,
            })
            .collect())
    }

    /// Stores a version's bytes and metadata together. Storing the same bytes
    /// again keeps the first upload's metadata.
    pub async fn store_version(
        &self,
        name: &str,
        meta: &VersionMeta,
        bytes: &[u8],
    ) -> redis::RedisResult<()> {
        let meta_json = serde_json::to_string(meta).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(self.keys.component(name, &meta.version), bytes)
            .ignore()
            .hset_nx(self.keys.versions(name), &meta.version, meta_json)
            .ignore();
        pipe.query_async(&mut self.redis.clone()).await
    }

    pub async fn activate(&self, request: ActivationRequest<'_>) -> redis::RedisResult<Activated> {
        let mut invocation = self.activate.prepare_invoke();
        invocation
            .key(self.keys.active())
            .key(self.keys.generation())
            .key(self.keys.versions(request.name))
            .key(self.keys.history(request.name))
            .key(self.keys.component(request.name, request.version))
            .arg(request.name)
            .arg(request.version)
            .arg(request.now_ms)
            .arg(request.by)
            .arg(request.action)
            .arg(if request.only_if_none { "1" } else { "0" })
            .arg(self.keys.changed())
            .arg(HISTORY_KEPT);
        let reply: Vec<Value> = invocation.invoke_async(&mut self.redis.clone()).await?;
        let text = |i: usize| reply.get(i).map(value_text).unwrap_or_default();
        let generation = text(2).parse().unwrap_or(0);
        Ok(match text(0).as_str() {
            "activated" => Activated::Activated {
                previous: Some(text(1)).filter(|p| !p.is_empty()),
                generation,
            },
            "unchanged" => Activated::Unchanged { generation },
            "kept" => Activated::Kept {
                active: text(1),
                generation,
            },
            _ => Activated::Missing,
        })
    }

    /// Name -> active version of every handler, and the generation they belong to.
    pub async fn active_all(&self) -> redis::RedisResult<(HashMap<String, String>, u64)> {
        let (active, generation): (HashMap<String, String>, Option<u64>) = redis::pipe()
            .atomic()
            .hgetall(self.keys.active())
            .get(self.keys.generation())
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((active, generation.unwrap_or(0)))
    }

    pub async fn active(&self, name: &str) -> redis::RedisResult<Option<String>> {
        self.redis.clone().hget(self.keys.active(), name).await
    }

    /// The channel announcing activations.
    pub fn changed_channel(&self) -> String {
        self.keys.changed()
    }

    pub async fn generation(&self) -> redis::RedisResult<u64> {
        let generation: Option<u64> = self.redis.clone().get(self.keys.generation()).await?;
        Ok(generation.unwrap_or(0))
    }

    /// Every stored version of a handler, oldest upload first.
    pub async fn versions(&self, name: &str) -> redis::RedisResult<Vec<VersionMeta>> {
        let raw: HashMap<String, String> =
            self.redis.clone().hgetall(self.keys.versions(name)).await?;
        let mut versions: Vec<VersionMeta> = raw
            .values()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        versions.sort_by(|a, b| {
            a.uploaded_at
                .cmp(&b.uploaded_at)
                .then_with(|| a.version.cmp(&b.version))
        });
        Ok(versions)
    }

    pub async fn version(
        &self,
        name: &str,
        version: &str,
    ) -> redis::RedisResult<Option<VersionMeta>> {
        let raw: Option<String> = self
            .redis
            .clone()
            .hget(self.keys.versions(name), version)
            .await?;
        Ok(raw.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// The latest activations, newest first.
    pub async fn history(&self, name: &str, limit: isize) -> redis::RedisResult<Vec<Activation>> {
        let raw: Vec<String> = self
            .redis
            .clone()
            .lrange(self.keys.history(name), 0, limit - 1)
            .await?;
        Ok(raw
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect())
    }

    pub async fn component(
        &self,
        name: &str,
        version: &str,
    ) -> redis::RedisResult<Option<Vec<u8>>> {
        self.redis
            .clone()
            .get(self.keys.component(name, version))
            .await
    }

    /// Records what this instance now runs; `heartbeat` keeps it listed.
    pub async fn confirm(&self, report: &InstanceReport) -> redis::RedisResult<()> {
        let handlers = serde_json::to_string(&report.handlers).unwrap_or_default();
        let key = self.keys.instance(&report.instance);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("generation", report.generation.to_string()),
                    ("switched_at", report.switched_at.to_string()),
                    ("handlers", handlers),
                ],
            )
            .ignore()
            .pexpire(&key, INSTANCE_FORGET_MS as i64)
            .ignore()
            .zadd(self.keys.instances(), &report.instance, report.last_seen)
            .ignore();
        pipe.query_async(&mut self.redis.clone()).await
    }

    pub async fn heartbeat(&self, instance: &str, now_ms: u64) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(self.keys.instances(), instance, now_ms)
            .ignore()
            .pexpire(self.keys.instance(instance), INSTANCE_FORGET_MS as i64)
            .ignore();
        pipe.query_async(&mut self.redis.clone()).await
    }

    pub async fn remove_instance(&self, instance: &str) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zrem(self.keys.instances(), instance)
            .ignore()
            .del(self.keys.instance(instance))
            .ignore();
        pipe.query_async(&mut self.redis.clone()).await
    }

    /// The instances that reported within [`INSTANCE_LIVE_MS`].
    pub async fn live_instances(&self, now_ms: u64) -> redis::RedisResult<Vec<InstanceReport>> {
        let mut redis = self.redis.clone();
        let _: i64 = redis
            .zrembyscore(
                self.keys.instances(),
                "-inf",
                now_ms.saturating_sub(INSTANCE_FORGET_MS),
            )
            .await?;
        let live: Vec<(String, u64)> = redis
            .zrangebyscore_withscores(
                self.keys.instances(),
                now_ms.saturating_sub(INSTANCE_LIVE_MS),
                "+inf",
            )
            .await?;
        let mut reports = Vec::with_capacity(live.len());
        for (instance, last_seen) in live {
            let fields: HashMap<String, String> =
                redis.hgetall(self.keys.instance(&instance)).await?;
            let number = |field: &str| fields.get(field).and_then(|v| v.parse().ok()).unwrap_or(0);
            let handlers = fields
                .get("handlers")
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_default();
            reports.push(InstanceReport {
                generation: number("generation"),
                switched_at: number("switched_at"),
                handlers,
                instance,
                last_seen,
            });
        }
        Ok(reports)
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}
