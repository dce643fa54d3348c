//! Retention (`[caches]`, `[artifacts]` and `retention_interval_s` in the config): every interval,
//! per project, what was last used longer ago than the age limit goes, then the least recently
//! used until the rest fits the size budget (`Retention::expired`). Caches are used when a build
//! restores them ([`caches::retain`]); artifacts count from when their build ended. A removed
//! build's artifacts say so on the build (`artifacts_removed_ms`); their blob leaves the store
//! unless another build has the same artifacts. Several coordinators may run it at once: each
//! pass only removes what is expired, so they agree.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::caches;
use crate::config::Retention;
use crate::core::{now_ms, record, store_error, Core};
use crate::store::{BuildFilter, QueueChange, StateStore};

/// Builds read per page while looking for artifacts.
const PAGE: usize = 500;

/// What one artifact pass removed: builds whose artifacts went, their bytes, blobs deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ArtifactsRemoved {
    pub builds: usize,
    pub bytes: u64,
    pub blobs: usize,
}

/// One pass over every finished build's artifacts.
pub async fn retain_artifacts<S: StateStore>(
    core: &Core<S>,
    policy: &Retention,
    now_ms: i64,
) -> Result<ArtifactsRemoved, Status> {
    let mut removed = ArtifactsRemoved::default();
    if policy.max_age_days == 0 && policy.max_bytes_per_project == 0 {
        return Ok(removed);
    }
    // (build id, ended, size, digest) of every build with artifacts, by project.
    let mut by_project: HashMap<String, Vec<(String, i64, u64, String)>> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = core
            .store
            .list_builds(&BuildFilter::default(), after.as_deref(), PAGE)
            .await
            .map_err(store_error)?;
        for row in &page {
            let b = record(row);
            if b.build_complete && !b.artifacts_digest.is_empty() {
                by_project.entry(b.project_name.clone()).or_default().push((
                    b.id.clone(),
                    b.end_time_ms,
                    b.artifacts_size,
                    b.artifacts_digest.clone(),
                ));
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(record(last).id.clone()),
            _ => break,
        }
    }
    let mut in_use: HashSet<String> = HashSet::new();
    let mut candidates: HashSet<String> = HashSet::new();
    for builds in by_project.values() {
        let used: Vec<(i64, u64)> = builds.iter().map(|b| (b.1, b.2)).collect();
        for (build, gone) in builds.iter().zip(policy.expired(&used, now_ms)) {
            let (id, _, size, digest) = build;
            if !gone {
                in_use.insert(digest.clone());
                continue;
            }
            let cleared = core
                .update(id, |row| {
                    let b = row.build.as_mut()?;
                    if b.artifacts_digest != *digest {
                        return None;
                    }
                    b.artifacts_digest.clear();
                    b.artifacts_removed_ms = now_ms;
                    Some(QueueChange::Keep)
                })
                .await?;
            if cleared.is_some() {
                core.blobs.delete_plain_artifacts(id).await?;
                removed.builds += 1;
                removed.bytes += size;
                candidates.insert(digest.clone());
            }
        }
    }
    for digest in candidates.difference(&in_use) {
        core.blobs.delete(digest).await?;
        removed.blobs += 1;
    }
    Ok(removed)
}

/// Runs both passes every `retention_interval_s` until `stop`.
pub async fn run<S: StateStore>(core: Arc<Core<S>>, stop: CancellationToken) {
    let every = std::time::Duration::from_secs(core.config.retention_interval_s);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = now_ms();
        match caches::retain(&core.store, &core.blobs, &core.config.caches, now).await {
            Ok(r) if r.entries > 0 => tracing::info!(
                entries = r.entries,
                bytes = r.bytes,
                segments = r.segments,
                "cache retention removed caches"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cache retention failed"),
        }
        match retain_artifacts(&core, &core.config.artifacts, now).await {
            Ok(r) if r.builds > 0 => tracing::info!(
                builds = r.builds,
                bytes = r.bytes,
                blobs = r.blobs,
                "artifact retention removed artifacts"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "artifact retention failed"),
        }
    }
}
