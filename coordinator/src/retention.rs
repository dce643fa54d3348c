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

/// What one artifact pass removed: builds whose artifacts went, and their bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ArtifactsRemoved {
    pub builds: usize,
    pub bytes: u64,
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
    for_each_build(core, |b| {
        if b.build_complete && !b.artifacts_digest.is_empty() {
            by_project.entry(b.project_name.clone()).or_default().push((
                b.id.clone(),
                b.end_time_ms,
                b.artifacts_size,
                b.artifacts_digest.clone(),
            ));
        }
    })
    .await?;
    for builds in by_project.values() {
        let used: Vec<(i64, u64)> = builds.iter().map(|b| (b.1, b.2)).collect();
        for (build, gone) in builds.iter().zip(policy.expired(&used, now_ms)) {
            let (id, _, size, digest) = build;
            if !gone {
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
            }
        }
    }
    Ok(removed)
}

/// Blob garbage collection, the second half of retention. A blob that nothing refers to (no
/// cache entry of any project, no build's artifacts or source: a source stays while a build that
/// used it is on record, for RetryBuild) and that was written more than `grace_ms` ago becomes a
/// candidate; a candidate of the previous pass that is still one now is deleted. The grace keeps
/// an upload that a build or a cache save is about to refer to; the second look keeps a blob that
/// a save took up again meanwhile. Collects what retention unlinked, what a rolling cache no
/// longer uses once replaced, what `kiln cache clear` unlinked, and uploads whose save or build
/// never came.
pub async fn sweep<S: StateStore>(
    core: &Core<S>,
    previous: &HashSet<String>,
    grace_ms: i64,
    now_ms: i64,
) -> Result<Swept, Status> {
    // Listed first: a reference recorded after the listing is seen below.
    let listed = core.blobs.list().await?;
    let mut referenced: HashSet<String> = HashSet::new();
    for_each_build(core, |b| {
        referenced.insert(b.artifacts_digest.clone());
        referenced.insert(b.source_digest.clone());
    })
    .await?;
    for project in core.store.cache_projects().await.map_err(store_error)? {
        for entry in core.store.caches(&project).await.map_err(store_error)? {
            referenced.extend(entry.segments);
        }
    }
    let mut swept = Swept::default();
    for (digest, written_ms) in listed {
        if referenced.contains(&digest) || written_ms > now_ms - grace_ms {
            continue;
        }
        if previous.contains(&digest) {
            core.blobs.delete(&digest).await?;
            swept.deleted += 1;
        } else {
            swept.candidates.insert(digest);
        }
    }
    Ok(swept)
}

/// Calls `each` with every build on record, reading them a page at a time.
async fn for_each_build<S: StateStore>(
    core: &Core<S>,
    mut each: impl FnMut(&kiln_proto::v1::Build),
) -> Result<(), Status> {
    let mut after: Option<String> = None;
    loop {
        let page = core
            .store
            .list_builds(&BuildFilter::default(), after.as_deref(), PAGE)
            .await
            .map_err(store_error)?;
        for row in &page {
            each(record(row));
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(record(last).id.clone()),
            _ => return Ok(()),
        }
    }
}

/// What one [`sweep`] did: blobs deleted, and the candidates for the next pass.
#[derive(Debug, Default)]
pub struct Swept {
    pub deleted: usize,
    pub candidates: HashSet<String>,
}

/// Runs the cache and artifact passes, then [`sweep`], every `retention_interval_s` until `stop`.
pub async fn run<S: StateStore>(core: Arc<Core<S>>, stop: CancellationToken) {
    let every = std::time::Duration::from_secs(core.config.retention_interval_s);
    let mut candidates = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = now_ms();
        match caches::retain(&core.store, &core.config.caches, now).await {
            Ok(r) if r.entries > 0 => tracing::info!(
                entries = r.entries,
                bytes = r.bytes,
                "cache retention removed caches"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cache retention failed"),
        }
        match retain_artifacts(&core, &core.config.artifacts, now).await {
            Ok(r) if r.builds > 0 => tracing::info!(
                builds = r.builds,
                bytes = r.bytes,
                "artifact retention removed artifacts"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "artifact retention failed"),
        }
        let grace_ms =
            i64::try_from(core.config.blob_grace_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        match sweep(&core, &candidates, grace_ms, now).await {
            Ok(swept) => {
                if swept.deleted > 0 {
                    tracing::info!(
                        blobs = swept.deleted,
                        "blobs nothing refers to were deleted"
                    );
                }
                candidates = swept.candidates;
            }
            Err(e) => tracing::warn!(error = %e, "blob collection failed"),
        }
    }
}
