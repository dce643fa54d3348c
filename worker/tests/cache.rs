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
    let direct = Arc::new(Direct::open(backend, "", dir.path()));
    let paths = ["/deps/**/*".to_string()];
    let first = cache::save(&engine, c, direct.as_ref(), &paths, "", None)
        .await
        .expect("save");
    assert_eq!(first.entry.files, 501);
    assert!(
        first.entry.segments.len() >= 2,
        "{:?}",
        first.entry.segments
    );
    docker(&["exec", c, "rm", "-rf", "/deps"]);
    let dyn_store: Arc<dyn CacheStore> = direct.clone();
    cache::restore(&engine, c, dyn_store, first.entry.clone(), false)
        .await
        .expect("restore");
    let listed = docker(&["exec", c, "sh", "-c", "ls /deps/sub | wc -l"]);
    assert_eq!(listed, "501");
    let again = cache::save(&engine, c, direct.as_ref(), &paths, "", None)
        .await
        .expect("save again");
    assert_eq!(again.entry.segments, first.entry.segments);
    assert_eq!(again.uploaded_segments, 0);
}
