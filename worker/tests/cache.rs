//! Build caches through a real container and a real blob store (a local directory): a cache saved,
//! restored into the emptied container and saved again cuts the same segments, whatever order
//! the directories list their entries in, so an unchanged cache uploads nothing.

mod common;
#[path = "common/direct.rs"]
mod direct;

use std::sync::Arc;

use direct::Direct;
use kiln_cache::Backend;
use kiln_tests::{docker, Container};
use kiln_worker::cache::{self, CacheStore};

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_cache_saves_as_the_same_segments() {
    let engine = common::engine().await;
    let container = Container::sleeping("cache-order");
    let c = container.0.as_str();
    // 24 MiB in 600 files made in descending name order, with fixed times: the restore makes
    // them again in the archive's order.
    let make = "mkdir -p /deps/sub && cd /deps/sub && for i in $(seq 600 -1 100); do yes \"line $i\" | head -c 40960 > f$i; done && touch -d @1700000000 /deps/sub/* /deps/sub /deps";
    docker(&["exec", c, "sh", "-c", make]);
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::Local {
        root: dir.path().join("store"),
    };
    let direct = Arc::new(Direct::open(backend, ""));
    let paths = ["/deps/**/*".to_string()];
    let first = cache::save(&engine, c, direct.clone(), &paths, "", None)
        .await
        .expect("save");
    assert_eq!(first.entry.files, 501);
    assert!(
        first.entry.segments.len() >= 2,
        "{:?}",
        first.entry.segments
    );
    // Nothing was restored before it: every segment went up, named by the store.
    assert_eq!(first.uploaded_segments, first.entry.segments.len());
    docker(&["exec", c, "rm", "-rf", "/deps"]);
    let dyn_store: Arc<dyn CacheStore> = direct.clone();
    // Without a listing, the save after it reads every file and asks the store about each segment.
    let restored = cache::restore(&engine, c, dyn_store, first.entry.clone(), false)
        .await
        .expect("restore");
    let listed = docker(&["exec", c, "sh", "-c", "ls /deps/sub | wc -l"]);
    assert_eq!(listed, "501");
    let again = cache::save(&engine, c, direct.clone(), &paths, "", Some(&restored))
        .await
        .expect("save again");
    assert!(!again.unchanged);
    assert_eq!(again.entry.segments, first.entry.segments);
    assert_eq!(again.uploaded_segments, 0);
}

/// A restore that cannot get every segment leaves the container as it found it: a segment missing
/// from the store stops it before anything is written; a damaged one found midway takes out the
/// files already put back, and keeps what was there before.
#[tokio::test(flavor = "multi_thread")]
async fn a_cache_that_cannot_be_had_whole_is_not_restored() {
    let engine = common::engine().await;
    let container = Container::sleeping("cache-whole");
    let c = container.0.as_str();
    // 48 MiB in 12 files: several segments, sorted by name (a10 .. a21).
    let make = "mkdir -p /deps && cd /deps && for i in $(seq 10 21); do head -c 4194304 /dev/urandom > a$i; done";
    docker(&["exec", c, "sh", "-c", make]);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    let direct = Arc::new(Direct::open(Backend::Local { root: root.clone() }, ""));
    let paths = ["/deps/**/*".to_string()];
    let saved = cache::save(&engine, c, direct.clone(), &paths, "", None)
        .await
        .expect("save");
    let segments = saved.entry.segments.clone();
    assert!(segments.len() >= 3, "{segments:?}");
    let blob = |digest: &str| {
        root.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    // The files before the restore: one of the cache's, changed, and one of the build's own.
    let reset = "rm -rf /deps && mkdir /deps && echo mine > /deps/a15 && echo own > /deps/own";
    let state = "cd /deps && ls | tr '\\n' ' ' && cat a15";
    let dyn_store: Arc<dyn CacheStore> = direct.clone();

    // The last segment gone: nothing is touched.
    let last = blob(segments.last().expect("a segment"));
    let kept = std::fs::read(&last).expect("the last segment");
    std::fs::remove_file(&last).expect("remove");
    docker(&["exec", c, "sh", "-c", reset]);
    let err = cache::restore(&engine, c, dyn_store.clone(), saved.entry.clone(), false)
        .await
        .expect_err("a missing segment");
    assert!(
        err.to_string().contains("is no longer in the store"),
        "{err}"
    );
    assert_eq!(docker(&["exec", c, "sh", "-c", state]), "a15 own mine");
    std::fs::write(&last, kept).expect("put back");

    // The last segment damaged: the files of the segments before it come out again.
    let last_digest = segments.last().expect("a segment").clone();
    let sound = std::fs::read(&last).expect("the last segment");
    let other = blob(&segments[0]);
    std::fs::copy(&other, &last).expect("damage");
    let err = cache::restore(&engine, c, dyn_store.clone(), saved.entry.clone(), false)
        .await
        .expect_err("a damaged segment");
    let text = err.to_string();
    assert!(text.contains(&last_digest), "{text}");
    assert!(text.contains("were removed"), "{text}");
    // a15 was the cache's too: it is gone with the rest; the build's own file stays.
    assert_eq!(
        docker(&["exec", c, "sh", "-c", "cd /deps && ls | tr '\\n' ' '"]),
        "own"
    );

    // Whole again, it restores.
    std::fs::write(&last, sound).expect("repair");
    docker(&["exec", c, "sh", "-c", reset]);
    cache::restore(&engine, c, dyn_store, saved.entry.clone(), false)
        .await
        .expect("restore");
    let listed = docker(&["exec", c, "sh", "-c", "ls /deps | wc -l"]);
    assert_eq!(listed, "13");
}
