//! Retention on real stores: the embedded state store and the local blob store. Expired cache
//! entries leave the index and expired artifacts leave their builds; blobs leave the blob store
//! when two sweeps in a row find nothing referring to them, whatever unlinked them.

mod common;

use common::fixtures::{build, create, get, id, update, CLAIM};
use kiln_coordinator::blobs::Blobs;
use std::collections::HashSet;
use std::sync::Arc;

use kiln_coordinator::caches::{retain, Removed};
use kiln_coordinator::config::Retention;
use kiln_coordinator::core::{now_ms, Core};
use kiln_coordinator::retention::{retain_artifacts, sweep, ArtifactsRemoved};
use kiln_coordinator::store::{EmbeddedStore, QueueChange, StateStore};
use kiln_coordinator::CoordinatorConfig;
use kiln_proto::v1::CacheEntry;

const DAY: i64 = 24 * 3600 * 1000;

async fn blob(blobs: &Blobs, content: &str) -> String {
    let chunks = futures_util::stream::iter([Ok(content.as_bytes().to_vec())]);
    blobs
        .store_stream(1 << 20, chunks)
        .await
        .expect("store a blob")
        .digest
}

fn entry(project: &str, key: &str, segments: &[&str], last_used_ms: i64) -> CacheEntry {
    CacheEntry {
        project: project.into(),
        paths: vec!["deps/**/*".into()],
        key: key.into(),
        segments: segments.iter().map(|s| s.to_string()).collect(),
        size: 100,
        files: 1,
        created_ms: 1,
        last_used_ms,
        build_id: format!("{project}:1"),
    }
}

/// A coordinator's stores in `dir` with the default config: embedded state, local blobs.
fn core(dir: &std::path::Path) -> Arc<Core<EmbeddedStore>> {
    let config = CoordinatorConfig::default().finish(dir).expect("config");
    let blobs = Blobs::open(dir, &config.store_config().expect("store")).expect("blobs");
    let store = EmbeddedStore::open(&dir.join("state")).expect("state");
    Core::new(store, blobs, config)
}

/// Two sweeps without grace, as two retention passes make: returns what the second deleted.
async fn sweep_twice(core: &Core<EmbeddedStore>) -> usize {
    let first = sweep(core, &HashSet::new(), 0, now_ms())
        .await
        .expect("sweep");
    assert_eq!(first.deleted, 0, "a first look deletes nothing");
    let second = sweep(core, &first.candidates, 0, now_ms())
        .await
        .expect("sweep");
    second.deleted
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_caches_go_with_the_segments_no_other_cache_uses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = core(dir.path());
    let (store, blobs) = (&core.store, &core.blobs);
    let only_old = blob(blobs, "only in the old cache").await;
    let shared = blob(blobs, "in the old cache and in another project's").await;
    let recent = blob(blobs, "in the recent cache").await;
    let now = 100 * DAY;
    for (e, immutable) in [
        (
            entry("web", "old", &[&only_old, &shared], now - 40 * DAY),
            true,
        ),
        (entry("web", "recent", &[&recent], now - DAY), true),
        (entry("api", "", &[&shared], now - 2 * DAY), false),
    ] {
        assert!(store.put_cache(e, immutable).await.expect("put"));
    }
    let policy = Retention {
        max_age_days: 30,
        max_bytes_per_project: 1 << 30,
    };
    let removed = retain(store, &policy, now).await.expect("retain");
    assert_eq!(
        removed,
        Removed {
            entries: 1,
            bytes: 100,
        }
    );
    // Within the grace period nothing goes, even unreferenced.
    let fresh = sweep(&core, &HashSet::new(), 3_600_000, now_ms())
        .await
        .expect("sweep");
    assert!(fresh.candidates.is_empty(), "{:?}", fresh.candidates);
    assert_eq!(sweep_twice(&core).await, 1);
    let present = blobs
        .contains_all(&[only_old, shared, recent.clone()])
        .await
        .expect("contains");
    assert_eq!(present, [false, true, true]);
    let keys =
        |entries: Vec<CacheEntry>| -> Vec<String> { entries.into_iter().map(|e| e.key).collect() };
    assert_eq!(keys(store.caches("web").await.expect("web")), ["recent"]);
    assert_eq!(keys(store.caches("api").await.expect("api")), [""]);

    // A budget of one entry per project keeps the most recently used.
    let tight = Retention {
        max_bytes_per_project: 100,
        ..policy
    };
    assert!(store
        .put_cache(entry("web", "newest", &[], now), true)
        .await
        .expect("put"));
    let removed = retain(store, &tight, now).await.expect("retain");
    assert_eq!(removed.entries, 1);
    assert_eq!(keys(store.caches("web").await.expect("web")), ["newest"]);
    // Nothing else expired: a second pass removes nothing.
    let again = retain(store, &tight, now).await.expect("retain");
    assert_eq!(again, Removed::default());

    // What nothing refers to goes, whatever left it: here a segment whose save never came. A
    // candidate that a save took up again before the second look stays.
    let orphan = blob(blobs, "uploaded by a save that failed").await;
    let taken_up = blob(blobs, "unreferenced, then saved again").await;
    let first = sweep(&core, &HashSet::new(), 0, now_ms())
        .await
        .expect("sweep");
    let want: HashSet<String> = [recent.clone(), orphan.clone(), taken_up.clone()].into();
    assert_eq!(first.candidates, want);
    assert!(store
        .put_cache(entry("api", "again", &[&taken_up], now), true)
        .await
        .expect("put"));
    let second = sweep(&core, &first.candidates, 0, now_ms())
        .await
        .expect("sweep");
    assert_eq!(second.deleted, 2);
    let present = blobs
        .contains_all(&[recent, orphan, taken_up])
        .await
        .expect("contains");
    assert_eq!(present, [false, false, true]);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_artifacts_leave_their_builds_and_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = core(dir.path());
    let now = 100 * DAY;
    let old_only = blob(&core.blobs, "artifacts only the old build has").await;
    let same = blob(&core.blobs, "artifacts two builds have").await;
    // (ended, artifacts) of four finished builds of one project.
    let mut ids = Vec::new();
    for (ended, digest) in [
        (now - 100 * DAY, &old_only),
        (now - 95 * DAY, &same),
        (now - DAY, &same),
        (now - DAY, &String::new()),
    ] {
        let row = update(
            &core.store,
            create(&core.store, build("web", 0)).await,
            CLAIM,
        )
        .await;
        let mut row = row;
        let b = row.build.as_mut().expect("record");
        b.build_complete = true;
        b.build_status = "SUCCEEDED".into();
        b.end_time_ms = ended;
        b.artifacts_digest = digest.clone();
        b.artifacts_size = 1000;
        ids.push(id(&update(&core.store, row, QueueChange::Finish).await));
    }
    let keep_all = Retention::default();
    let none = retain_artifacts(&core, &keep_all, now)
        .await
        .expect("retain");
    assert_eq!(none, ArtifactsRemoved::default());
    let policy = Retention {
        max_age_days: 90,
        max_bytes_per_project: 0,
    };
    let removed = retain_artifacts(&core, &policy, now).await.expect("retain");
    assert_eq!(
        removed,
        ArtifactsRemoved {
            builds: 2,
            bytes: 2000,
        }
    );
    let digest_of = |row: kiln_proto::v1::StoredBuild| {
        let b = row.build.expect("record");
        (b.artifacts_digest, b.artifacts_removed_ms)
    };
    assert_eq!(
        digest_of(get(&core.store, &ids[0]).await),
        (String::new(), now)
    );
    assert_eq!(
        digest_of(get(&core.store, &ids[1]).await),
        (String::new(), now)
    );
    assert_eq!(
        digest_of(get(&core.store, &ids[2]).await),
        (same.clone(), 0)
    );
    // The old build's own blob goes; the one a kept build shares stays.
    assert_eq!(sweep_twice(&core).await, 1);
    let present = core
        .blobs
        .contains_all(&[old_only, same])
        .await
        .expect("contains");
    assert_eq!(present, [false, true]);
}
