//! The build cache steps of the phase runner (semantics §6): the key is evaluated and the cache
//! restored at the end of DOWNLOAD_SOURCE, and saved at the start of UPLOAD_ARTIFACTS when the
//! build is still succeeding after POST_BUILD. Nothing here fails the build: every problem is a
//! log line.

use kiln_buildspec::CacheAction;

use super::Build;
use crate::cache;

/// The evaluated `cache.key` (empty: the rolling cache) and `fallback-keys`, and what was
/// restored.
pub(super) struct CacheKeys {
    key: String,
    prefixes: Vec<String>,
    restored: Option<cache::Restored>,
}

impl Build {
    /// Evaluates the keys and restores the cache (unless `action: save`).
    pub(super) async fn restore_cache(&mut self) {
        let Some(spec) = self.job.buildspec.cache.clone() else {
            return;
        };
        let Some(store) = self.job.cache.clone() else {
            self.log.agent(
                "Cache not used: caching is off for this build (its project's cache type is NO_CACHE)",
            );
            return;
        };
        let mut keys = CacheKeys {
            key: String::new(),
            prefixes: Vec::new(),
            restored: None,
        };
        if let Some(key) = &spec.key {
            match self.evaluate_keys(key, &spec.fallback_keys).await {
                Ok(evaluated) => keys = evaluated,
                Err(e) => {
                    self.log
                        .agent(&format!("Cache skipped: cannot evaluate its key: {e}"));
                    return;
                }
            }
        }
        let action = spec.action;
        let (key, prefixes) = (keys.key.clone(), keys.prefixes.clone());
        self.cache_keys = Some(keys);
        if action == Some(CacheAction::Save) {
            self.log.agent("Cache not restored: its action is save");
            return;
        }
        let found = match store.lookup(&spec.paths, &key, &prefixes, true).await {
            Ok(found) => found,
            Err(e) => {
                self.log.agent(&format!("Cache not restored: {e}"));
                return;
            }
        };
        let Some(entry) = found else {
            self.log.agent(&match key.as_str() {
                "" => "Cache miss: this project has no cache of these paths yet".to_string(),
                key => format!("Cache miss: no cache for key {key} or the fallback keys"),
            });
            return;
        };
        // A save may follow (and use the listing) unless the action is restore or the key was
        // found exactly (a keyed cache never changes).
        let list = action != Some(CacheAction::Restore) && (key.is_empty() || entry.key != key);
        let restored =
            cache::restore(&self.engine, &self.resources.container, store, entry, list).await;
        match restored {
            Ok(restored) => {
                let entry = &restored.entry;
                self.log.agent(&format!(
                    "Cache restored{}: {} files, {} bytes, saved by build {}",
                    keyed(&entry.key),
                    entry.files,
                    entry.size,
                    entry.build_id
                ));
                if let Some(keys) = &mut self.cache_keys {
                    keys.restored = Some(restored);
                }
            }
            Err(e) => self.log.agent(&format!("Cache not restored: {e}")),
        }
    }

    async fn evaluate_keys(
        &mut self,
        key: &str,
        fallbacks: &[String],
    ) -> Result<CacheKeys, crate::docker::EngineError> {
        let key = self.shell_evaluate(key).await?;
        let mut prefixes = Vec::new();
        for fallback in fallbacks {
            prefixes.push(self.shell_evaluate(fallback).await?);
        }
        Ok(CacheKeys {
            key,
            prefixes,
            restored: None,
        })
    }

    /// Saves the cache when the build is still succeeding (unless `action: restore`).
    pub(super) async fn save_cache(&mut self) {
        let Some(spec) = self.job.buildspec.cache.clone() else {
            return;
        };
        let (Some(store), Some(keys)) = (self.job.cache.clone(), self.cache_keys.take()) else {
            return;
        };
        if spec.action == Some(CacheAction::Restore) {
            self.log.agent("Cache not saved: its action is restore");
            return;
        }
        if !self.succeeding {
            self.log
                .agent("Cache not saved: the build is not succeeding");
            return;
        }
        if !keys.key.is_empty() {
            // A keyed entry is immutable: do not even read the files when the key exists.
            match store.lookup(&spec.paths, &keys.key, &[], false).await {
                Ok(Some(_)) => {
                    self.log.agent(&format!(
                        "Cache not saved: key {} exists, and a keyed cache never changes",
                        keys.key
                    ));
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    self.log.agent(&format!("Cache not saved: {e}"));
                    return;
                }
            }
        }
        let container = self.resources.container.clone();
        let saved = cache::save(
            &self.engine,
            &container,
            store.clone(),
            &spec.paths,
            &keys.key,
            keys.restored.as_ref(),
        )
        .await;
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                self.log.agent(&format!("Cache not saved: {e}"));
                return;
            }
        };
        for note in &saved.notes {
            self.log.agent(&format!("Cache: {note}"));
        }
        if saved.entry.files == 0 {
            // An empty cache would only replace a useful one.
            self.log.agent("Cache not saved: its paths select no files");
            return;
        }
        let summary = format!(
            "{}{} files, {} bytes; {} of {} segments ({} bytes) uploaded",
            match saved.unchanged {
                true => "unchanged since it was restored (no file read), ",
                false => "",
            },
            saved.entry.files,
            saved.entry.size,
            saved.uploaded_segments,
            saved.entry.segments.len(),
            saved.uploaded_bytes
        );
        match store.save(saved.entry).await {
            Ok(true) => self
                .log
                .agent(&format!("Cache saved{}: {summary}", keyed(&keys.key))),
            Ok(false) => self.log.agent(&format!(
                "Cache not saved: key {} was saved by another build meanwhile",
                keys.key
            )),
            Err(e) => self.log.agent(&format!("Cache not saved: {e}")),
        }
    }
}

fn keyed(key: &str) -> String {
    match key {
        "" => String::new(),
        key => format!(" under key {key}"),
    }
}
