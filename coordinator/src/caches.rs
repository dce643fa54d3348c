//! Build caches (semantics §6) on the coordinator: the index lives in the state store (one entry
//! per project, paths and key; see `store::cache_slot`), the content in the blob store. Workers
//! look entries up and save them over `WorkerService`; clients list and clear them over
//! `BuildService`; [`retain`] applies the retention of `[caches]` (see `retention`).

use std::sync::atomic::{AtomicU64, Ordering};

use kiln_proto::v1::CacheEntry;
use tonic::Status;

use crate::blobs::Blobs;
use crate::config::Retention;
use crate::core::{now_ms, store_error};
use crate::store::{cache_slot, StateStore};

/// Bytes of one cache segment at most (the worker cuts them far smaller).
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// Digests one HasBlobs call may ask about.
pub const MAX_DIGESTS: usize = 1000;

/// The entry to restore among a project's: the one with `key` exactly, else for each prefix in
/// turn the newest whose key starts with it. Only entries with the same `paths` count.
pub fn find<'a>(
    entries: &'a [CacheEntry],
    paths: &[String],
    key: &str,
    prefixes: &[String],
) -> Option<&'a CacheEntry> {
    let same_paths = || entries.iter().filter(move |e| e.paths == paths);
    if let Some(exact) = same_paths().find(|e| e.key == key) {
        return Some(exact);
    }
    prefixes.iter().find_map(|prefix| {
        same_paths()
            .filter(|e| !e.key.is_empty() && e.key.starts_with(prefix.as_str()))
            .max_by_key(|e| (e.created_ms, e.key.clone()))
    })
}

/// Cache restores since the coordinator started: found an entry, or not.
#[derive(Debug, Default)]
pub struct Lookups {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// Looks a cache up for `project`; NOT_FOUND when nothing matches. Restores are counted in
/// `lookups`.
pub async fn lookup<S: StateStore>(
    store: &S,
    lookups: Option<&Lookups>,
    project: &str,
    paths: &[String],
    key: &str,
    prefixes: &[String],
) -> Result<CacheEntry, Status> {
    let entries = store.caches(project).await.map_err(store_error)?;
    let found = find(&entries, paths, key, prefixes).cloned();
    if let Some(lookups) = lookups {
        let counter = match found {
            Some(_) => &lookups.hits,
            None => &lookups.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = &found {
            // Retention keeps what builds use; a failure here costs no restore.
            let touched = store
                .touch_cache(project, &cache_slot(entry), now_ms())
                .await;
            if let Err(e) = touched {
                tracing::warn!(error = %e, project, "cannot mark a cache used");
            }
        }
    }
    found.ok_or_else(|| Status::not_found(format!("no cache of project {project} matches")))
}

/// Records an entry a build of `project` saved, once every segment is in the blob store. A keyed
/// entry is immutable (false when its key exists); the rolling one is replaced.
pub async fn save<S: StateStore>(
    store: &S,
    blobs: &Blobs,
    project: &str,
    build_id: &str,
    mut entry: CacheEntry,
) -> Result<bool, Status> {
    if entry.paths.is_empty() {
        return Err(Status::invalid_argument("a cache entry needs its paths"));
    }
    for batch in entry.segments.chunks(MAX_DIGESTS) {
        let present = blobs.contains_all(batch).await?;
        if let Some(missing) = batch.iter().zip(present).find(|(_, p)| !p) {
            return Err(Status::failed_precondition(format!(
                "cache segment {} is not in the store: upload it first",
                missing.0
            )));
        }
    }
    entry.project = project.to_string();
    entry.build_id = build_id.to_string();
    entry.created_ms = now_ms();
    entry.last_used_ms = entry.created_ms;
    let immutable = !entry.key.is_empty();
    store.put_cache(entry, immutable).await.map_err(store_error)
}

/// A project's caches, newest first.
pub async fn list<S: StateStore>(store: &S, project: &str) -> Result<Vec<CacheEntry>, Status> {
    let mut entries = store.caches(project).await.map_err(store_error)?;
    entries.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.key.cmp(&b.key)));
    Ok(entries)
}

/// Removes a project's caches with `key` (empty: the rolling ones), or all with `all`; returns
/// how many went. Their segments go with the next blob sweeps (`retention::sweep`).
pub async fn delete<S: StateStore>(
    store: &S,
    project: &str,
    key: &str,
    all: bool,
) -> Result<u64, Status> {
    let entries: Vec<CacheEntry> = store
        .caches(project)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|e| all || e.key == key)
        .collect();
    store
        .delete_caches(project, &entries)
        .await
        .map_err(store_error)
}

/// What one retention pass removed: entries, and the bytes of their tars.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub entries: usize,
    pub bytes: u64,
}

/// One retention pass over every project's caches: drops the expired entries from the index
/// (each only if it is still the entry judged: a save meanwhile keeps its new one). Their
/// segments go with the next blob sweeps (`retention::sweep`) unless something else uses them.
pub async fn retain<S: StateStore>(
    store: &S,
    policy: &Retention,
    now_ms: i64,
) -> Result<Removed, Status> {
    let mut removed = Removed::default();
    for project in store.cache_projects().await.map_err(store_error)? {
        let entries = store.caches(&project).await.map_err(store_error)?;
        let used: Vec<(i64, u64)> = entries
            .iter()
            .map(|e| (e.last_used_ms.max(e.created_ms), e.size))
            .collect();
        let expired = policy.expired(&used, now_ms);
        let gone: Vec<CacheEntry> = entries
            .into_iter()
            .zip(&expired)
            .filter(|(_, gone)| **gone)
            .map(|(e, _)| e)
            .collect();
        removed.entries += store
            .delete_caches(&project, &gone)
            .await
            .map_err(store_error)? as usize;
        removed.bytes += gone.iter().map(|e| e.size).sum::<u64>();
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(paths: &[&str], key: &str, created_ms: i64) -> CacheEntry {
        CacheEntry {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            key: key.into(),
            created_ms,
            ..Default::default()
        }
    }

    #[test]
    fn exact_key_first_then_each_prefix_newest_first() {
        let paths = ["deps/**/*".to_string()];
        let entries = [
            entry(&["deps/**/*"], "npm-main-aaa", 3),
            entry(&["deps/**/*"], "npm-main-bbb", 5),
            entry(&["deps/**/*"], "npm-feature-ccc", 9),
            entry(&["other/**/*"], "npm-main-zzz", 99),
            entry(&["deps/**/*"], "", 100),
        ];
        let key_of = |key: &str, prefixes: &[&str]| {
            let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
            find(&entries, &paths, key, &prefixes).map(|e| e.key.clone())
        };
        assert_eq!(
            key_of("npm-main-aaa", &["npm-"]).as_deref(),
            Some("npm-main-aaa")
        );
        assert_eq!(
            key_of("npm-main-new", &["npm-main-", "npm-"]).as_deref(),
            Some("npm-main-bbb")
        );
        assert_eq!(
            key_of("npm-x", &["npm-nothing-", "npm-"]).as_deref(),
            Some("npm-feature-ccc")
        );
        assert_eq!(key_of("npm-x", &["pip-"]), None);
        // The rolling cache is the empty key, never a prefix match.
        assert_eq!(key_of("", &[]).as_deref(), Some(""));
        assert_eq!(key_of("zzz", &[""]).as_deref(), Some("npm-feature-ccc"));
    }
}
