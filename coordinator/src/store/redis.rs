//! The Redis state store: several coordinators share one Redis.
//!
//! Every change that touches more than one key is one Lua script, so it is atomic and never a
//! read-modify-write from Rust: creating a build (`redis/create_build.lua`), the compare-and-set
//! of a build with its queue change (`redis/update_build.lua`) and appending a log chunk
//! (`redis/append_log.lua`); each script's header documents its keys and arguments. Changes of
//! one key (projects) are single commands. Reads are plain commands, pipelined.
//!
//! Keys, each starting with the store's prefix (so tests and Kiln installations can share a
//! Redis):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `build:{id}` | hash | `v` the version (so scripts compare-and-set without decoding), `d` the `StoredBuild` (prost) |
//! | `seq` | string | the last `queue_seq` given out (also creation order) |
//! | `number:{project}` | string | the project's last build number |
//! | `token:{token}` | string | the id of the build an idempotency token created |
//! | `queue` | zset | queued build ids, score [`queue_rank`] (exact in a double) |
//! | `deadlines` | zset | queued build ids, score `queued_deadline_ms` |
//! | `active` | set | claimed, unfinished build ids |
//! | `running:{project}` | set | the project's claimed, unfinished build ids (the limit) |
//! | `index`, `index:{project}` | zset | build ids, score `queue_seq`, for `list_builds` |
//! | `projects` | hash | project name to `Project` (prost) |
//! | `caches:{project}` | hash | `cache_slot` to `CacheEntry` (prost) |
//! | `cache-used:{project}` | hash | `cache_slot` to when a build last restored it (ms) |
//! | `cache-projects` | set | projects that have (or had) caches |
//! | `log:{id}`, `logend:{id}` | list | chunk `seq` at index `seq`; its end offset in the log |
//!
//! In a Redis Cluster every key of one prefix must hash to one slot: use a prefix with a hash
//! tag, such as `{kiln}:`.

use ::redis::aio::ConnectionManager;
use ::redis::{cmd, from_redis_value, pipe, Client, RedisError, Script, Value};
use kiln_proto::v1::{CacheEntry, Project, StoredBuild};
use prost::Message;

use super::{
    cache_slot, decode_each, decode_found, decode_row, id_and_project, page_builds, queue_rank,
    stamp_new, BuildFilter, Created, QueueChange, StateStore, StoreError, StoreResult, StoredChunk,
    Updated,
};

impl From<RedisError> for StoreError {
    fn from(err: RedisError) -> Self {
        StoreError::Redis(err.to_string())
    }
}

/// A [`StateStore`] on Redis. Cheap to clone; clones share one multiplexed connection, which
/// reconnects by itself.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    scripts: Scripts,
}

#[derive(Clone)]
struct Scripts {
    create_build: Script,
    update_build: Script,
    append_log: Script,
    touch_cache: Script,
    delete_caches: Script,
}

/// A cache entry as `caches:{project}` holds it: as saved, with `last_used_ms` at its
/// `created_ms` (restores mark `cache-used:{project}` instead), so the same save always has the
/// same bytes, which is how a delete knows the entry was not saved again meanwhile.
fn stored_cache(entry: &CacheEntry) -> Vec<u8> {
    CacheEntry {
        last_used_ms: entry.created_ms,
        ..entry.clone()
    }
    .encode_to_vec()
}

#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn of(&self, name: &str, of: &str) -> String {
        format!("{}{name}:{of}", self.prefix)
    }
}

/// The script's name for a queue change, and the limit it carries.
fn change_arg(change: QueueChange) -> (&'static str, u32) {
    match change {
        QueueChange::Keep => ("keep", 0),
        QueueChange::Enqueue => ("enqueue", 0),
        QueueChange::Claim { limit } => ("claim", limit),
        QueueChange::Finish => ("finish", 0),
    }
}

/// Redis `LIMIT`/`LRANGE` arguments are signed.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`); every key starts with
    /// `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<RedisStore> {
        let conn = ConnectionManager::new(Client::open(url)?).await?;
        Ok(RedisStore {
            conn,
            keys: Keys {
                prefix: prefix.to_owned(),
            },
            scripts: Scripts {
                create_build: Script::new(include_str!("redis/create_build.lua")),
                update_build: Script::new(include_str!("redis/update_build.lua")),
                append_log: Script::new(include_str!("redis/append_log.lua")),
                touch_cache: Script::new(include_str!("redis/touch_cache.lua")),
                delete_caches: Script::new(include_str!("redis/delete_caches.lua")),
            },
        })
    }

    /// Up to `n` ids of `index` created before `before`, newest first, with their rows.
    async fn index_page(
        &self,
        index: &str,
        before: Option<u64>,
        n: usize,
    ) -> StoreResult<Vec<(u64, Option<StoredBuild>)>> {
        let max = before.map_or_else(|| "+inf".to_owned(), |seq| format!("({seq}"));
        let page: Vec<(String, f64)> = cmd("ZREVRANGEBYSCORE")
            .arg(index)
            .arg(max)
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(signed(n as u64))
            .query_async(&mut self.conn.clone())
            .await?;
        let ids: Vec<String> = page.iter().map(|(id, _)| id.clone()).collect();
        let rows = self.get_builds(&ids).await?;
        // Scores are queue_seqs, integers exact in a double.
        Ok(page
            .into_iter()
            .map(|(_, seq)| seq as u64)
            .zip(rows)
            .collect())
    }
}

impl StateStore for RedisStore {
    async fn create_build(
        &self,
        mut build: StoredBuild,
        idempotency_token: Option<String>,
    ) -> StoreResult<Created> {
        // The script appends the number and queue_seq to this row.
        stamp_new(&mut build, 0, 0);
        let (id, project) = id_and_project(&build);
        let (id, project) = (id.to_owned(), project.to_owned());
        let priority = build.build.as_ref().map_or(0, |b| b.priority);
        let k = &self.keys;
        let mut call = self.scripts.create_build.key(k.of("build", &id));
        call.key(k.key("seq"))
            .key(k.of("number", &project))
            .key(k.key("queue"))
            .key(k.key("deadlines"))
            .key(k.key("index"))
            .key(k.of("index", &project));
        if let Some(token) = &idempotency_token {
            call.key(k.of("token", token));
        }
        call.arg(build.encode_to_vec())
            .arg(&id)
            .arg(queue_rank(priority, 0))
            .arg(build.queued_deadline_ms)
            .arg(if build.spec.is_some() { "1" } else { "0" });
        let created: Value = call.invoke_async(&mut self.conn.clone()).await?;
        if let Value::Array(_) = created {
            let (number, seq): (u64, u64) = from_redis_value(&created)?;
            stamp_new(&mut build, number, seq);
            return Ok(Created::New(build));
        }
        let existing: String = from_redis_value(&created)?;
        match self.get_build(&existing).await? {
            Some(build) => Ok(Created::Existing(build)),
            None => Err(StoreError::Corrupt(format!(
                "an idempotency token names build {existing}, which is not stored"
            ))),
        }
    }

    async fn get_build(&self, id: &str) -> StoreResult<Option<StoredBuild>> {
        let row: Option<Vec<u8>> = cmd("HGET")
            .arg(self.keys.of("build", id))
            .arg("d")
            .query_async(&mut self.conn.clone())
            .await?;
        decode_found(row)
    }

    async fn get_builds(&self, ids: &[String]) -> StoreResult<Vec<Option<StoredBuild>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut reads = pipe();
        for id in ids {
            reads.cmd("HGET").arg(self.keys.of("build", id)).arg("d");
        }
        let rows: Vec<Option<Vec<u8>>> = reads.query_async(&mut self.conn.clone()).await?;
        decode_each(rows)
    }

    async fn list_builds(
        &self,
        filter: &BuildFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<StoredBuild>> {
        let before = match after {
            None => None,
            Some(id) => {
                let seq: Option<f64> = cmd("ZSCORE")
                    .arg(self.keys.key("index"))
                    .arg(id)
                    .query_async(&mut self.conn.clone())
                    .await?;
                match seq {
                    Some(seq) => Some(seq as u64),
                    None => return Ok(Vec::new()),
                }
            }
        };
        let index = match &filter.project {
            Some(project) => self.keys.of("index", project),
            None => self.keys.key("index"),
        };
        let index = index.as_str();
        page_builds(filter, before, limit, |before, n| {
            self.index_page(index, before, n)
        })
        .await
    }

    async fn update_build(
        &self,
        mut build: StoredBuild,
        change: QueueChange,
    ) -> StoreResult<Updated> {
        let expected = build.version;
        build.version += 1;
        let (id, project) = id_and_project(&build);
        let priority = build.build.as_ref().map_or(0, |b| b.priority);
        let (change, limit) = change_arg(change);
        let k = &self.keys;
        let outcome: String = self
            .scripts
            .update_build
            .key(k.of("build", id))
            .key(k.key("queue"))
            .key(k.key("deadlines"))
            .key(k.key("active"))
            .key(k.of("running", project))
            .arg(expected)
            .arg(build.encode_to_vec())
            .arg(change)
            .arg(limit)
            .arg(queue_rank(priority, build.queue_seq))
            .arg(build.queued_deadline_ms)
            .arg(id)
            .invoke_async(&mut self.conn.clone())
            .await?;
        match outcome.as_str() {
            "done" => Ok(Updated::Done(build)),
            "conflict" => Ok(Updated::Conflict),
            "limit" => Ok(Updated::LimitReached),
            "missing" => Ok(Updated::Missing),
            other => Err(StoreError::Redis(format!(
                "update_build.lua answered {other:?}"
            ))),
        }
    }

    async fn queue_head(&self, limit: usize) -> StoreResult<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(cmd("ZRANGE")
            .arg(self.keys.key("queue"))
            .arg(0)
            .arg(signed(limit as u64 - 1))
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn queue_len(&self) -> StoreResult<u64> {
        Ok(cmd("ZCARD")
            .arg(self.keys.key("queue"))
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn queue_expired(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(cmd("ZRANGEBYSCORE")
            .arg(self.keys.key("deadlines"))
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(signed(limit as u64))
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn active_builds(&self) -> StoreResult<Vec<String>> {
        let mut ids: Vec<String> = cmd("SMEMBERS")
            .arg(self.keys.key("active"))
            .query_async(&mut self.conn.clone())
            .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn put_project(&self, project: Project, create_only: bool) -> StoreResult<bool> {
        let command = if create_only { "HSETNX" } else { "HSET" };
        let added: u64 = cmd(command)
            .arg(self.keys.key("projects"))
            .arg(&project.name)
            .arg(project.encode_to_vec())
            .query_async(&mut self.conn.clone())
            .await?;
        // HSETNX answers whether it stored, HSET how many fields it added.
        Ok(if create_only { added == 1 } else { added == 0 })
    }

    async fn get_project(&self, name: &str) -> StoreResult<Option<Project>> {
        let row: Option<Vec<u8>> = cmd("HGET")
            .arg(self.keys.key("projects"))
            .arg(name)
            .query_async(&mut self.conn.clone())
            .await?;
        decode_found(row)
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        let rows: Vec<Vec<u8>> = cmd("HVALS")
            .arg(self.keys.key("projects"))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut projects = rows
            .iter()
            .map(|row| decode_row(row))
            .collect::<StoreResult<Vec<Project>>>()?;
        projects.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(projects)
    }

    async fn delete_project(&self, name: &str) -> StoreResult<bool> {
        let removed: u64 = cmd("HDEL")
            .arg(self.keys.key("projects"))
            .arg(name)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(removed == 1)
    }

    async fn put_cache(&self, entry: CacheEntry, immutable: bool) -> StoreResult<bool> {
        let command = if immutable { "HSETNX" } else { "HSET" };
        let (added, _): (u64, u64) = pipe()
            .atomic()
            .cmd(command)
            .arg(self.keys.of("caches", &entry.project))
            .arg(cache_slot(&entry))
            .arg(stored_cache(&entry))
            .cmd("SADD")
            .arg(self.keys.key("cache-projects"))
            .arg(&entry.project)
            .query_async(&mut self.conn.clone())
            .await?;
        // HSETNX answers whether it stored; HSET always stores.
        Ok(!immutable || added == 1)
    }

    async fn caches(&self, project: &str) -> StoreResult<Vec<CacheEntry>> {
        let (rows, used): (Vec<Vec<u8>>, std::collections::HashMap<String, i64>) = pipe()
            .cmd("HVALS")
            .arg(self.keys.of("caches", project))
            .cmd("HGETALL")
            .arg(self.keys.of("cache-used", project))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut entries: Vec<CacheEntry> = rows
            .iter()
            .map(|row| decode_row(row))
            .collect::<StoreResult<_>>()?;
        for entry in &mut entries {
            if let Some(ms) = used.get(&cache_slot(entry)) {
                entry.last_used_ms = entry.last_used_ms.max(*ms);
            }
        }
        Ok(entries)
    }

    async fn touch_cache(&self, project: &str, slot: &str, used_ms: i64) -> StoreResult<()> {
        let _: i64 = self
            .scripts
            .touch_cache
            .key(self.keys.of("caches", project))
            .key(self.keys.of("cache-used", project))
            .arg(slot)
            .arg(used_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn cache_projects(&self) -> StoreResult<Vec<String>> {
        let mut projects: Vec<String> = cmd("SMEMBERS")
            .arg(self.keys.key("cache-projects"))
            .query_async(&mut self.conn.clone())
            .await?;
        projects.sort_unstable();
        Ok(projects)
    }

    async fn delete_caches(&self, project: &str, entries: &[CacheEntry]) -> StoreResult<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.scripts.delete_caches.prepare_invoke();
        invocation
            .key(self.keys.of("caches", project))
            .key(self.keys.of("cache-used", project));
        for entry in entries {
            invocation.arg(cache_slot(entry)).arg(stored_cache(entry));
        }
        let removed: u64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(removed)
    }

    async fn append_log(&self, build_id: &str, seq: u64, data: &[u8]) -> StoreResult<u64> {
        let next: i64 = self
            .scripts
            .append_log
            .key(self.keys.of("log", build_id))
            .key(self.keys.of("logend", build_id))
            .arg(seq)
            .arg(data)
            .invoke_async(&mut self.conn.clone())
            .await?;
        u64::try_from(next).map_err(|_| StoreError::LogGap {
            build: build_id.to_owned(),
            expected: (-1 - next).unsigned_abs(),
            got: seq,
        })
    }

    async fn read_log(
        &self,
        build_id: &str,
        from_seq: u64,
        max_chunks: usize,
    ) -> StoreResult<Vec<StoredChunk>> {
        if max_chunks == 0 {
            return Ok(Vec::new());
        }
        let last = signed(from_seq.saturating_add(max_chunks as u64 - 1));
        // The end offsets from the chunk before `from_seq` on: chunk i starts where i - 1 ends.
        let (chunks, ends): (Vec<Vec<u8>>, Vec<u64>) = pipe()
            .atomic()
            .cmd("LRANGE")
            .arg(self.keys.of("log", build_id))
            .arg(signed(from_seq))
            .arg(last)
            .cmd("LRANGE")
            .arg(self.keys.of("logend", build_id))
            .arg(signed(from_seq.saturating_sub(1)))
            .arg(last)
            .query_async(&mut self.conn.clone())
            .await?;
        let starts = (from_seq == 0).then_some(0).into_iter().chain(ends);
        Ok((from_seq..)
            .zip(starts)
            .zip(chunks)
            .map(|((seq, offset), data)| StoredChunk { seq, offset, data })
            .collect())
    }

    async fn log_len(&self, build_id: &str) -> StoreResult<u64> {
        Ok(cmd("LLEN")
            .arg(self.keys.of("log", build_id))
            .query_async(&mut self.conn.clone())
            .await?)
    }
}
