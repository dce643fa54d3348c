//! What only one backend has: the embedded store's journal (torn tail, compaction), directory
//! lock and group-commit throughput; Redis's own durability; and [`AnyStore`] choosing between
//! them. The behaviour both share is tested once, in `store.rs`.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::fixtures::{build, create, get, id, number, update, CLAIM};
use common::RedisServer;
use kiln_coordinator::store::{
    AnyStore, EmbeddedOptions, EmbeddedStore, QueueChange, RedisStore, StateStore,
};
use kiln_proto::v1::Project;
use prost::Message;
use tempfile::TempDir;

fn journal(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("journal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_drops_a_torn_last_journal_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let kept = create(&store, build("p", 0)).await;
    let torn = create(&store, build("p", 0)).await;
    drop(store);
    // The crash cut the last record short.
    let len = std::fs::metadata(journal(&dir)).expect("journal").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(journal(&dir))
        .expect("journal");
    file.set_len(len - 5).expect("truncate");
    drop(file);

    let store = EmbeddedStore::open(dir.path()).expect("reopen after a torn record");
    assert_eq!(get(&store, &id(&kept)).await, kept);
    assert_eq!(store.get_build(&id(&torn)).await.expect("get"), None);
    // A torn record was never acknowledged (a crash cut it), so its number is free again.
    assert_eq!(number(&create(&store, build("p", 0)).await), 2);
    drop(store);

    // Garbage after the last record (a frame claiming more than follows) is dropped too.
    let mut bytes = std::fs::read(journal(&dir)).expect("journal");
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(journal(&dir), bytes).expect("journal");
    let store = EmbeddedStore::open(dir.path()).expect("reopen after garbage");
    assert_eq!(store.queue_len().await.expect("queue_len"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_compaction_keeps_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = EmbeddedOptions {
        compact_after_bytes: 16 << 10,
    };
    let store = Arc::new(EmbeddedStore::open_with(dir.path(), options.clone()).expect("open"));
    let mut written = 0u64;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut row = create(&*store, build("p", 0)).await;
                for round in 0..40 {
                    let change = [CLAIM, QueueChange::Enqueue][round % 2];
                    row.build.as_mut().expect("build").attempt = round as u32;
                    row = update(&*store, row, change).await;
                }
                row
            })
        })
        .collect();
    let mut last = Vec::new();
    for worker in workers {
        let row = worker.await.expect("task");
        written += 41 * row.encoded_len() as u64;
        last.push(row);
    }
    store
        .put_project(
            Project {
                name: "p".into(),
                ..Default::default()
            },
            true,
        )
        .await
        .expect("put");
    let before = std::fs::metadata(journal(&dir)).expect("journal").len();
    drop(store);
    assert!(
        before < written / 2,
        "compacted while running: {before} of {written} bytes"
    );

    let store = EmbeddedStore::open_with(dir.path(), options).expect("reopen");
    let snapshot = std::fs::metadata(journal(&dir)).expect("journal").len();
    assert!(
        before <= (4 * snapshot).max(16 << 10) + 8 * 1024,
        "{before} vs {snapshot}"
    );
    for row in &last {
        assert_eq!(&get(&store, &id(row)).await, row);
    }
    assert_eq!(
        store.queue_len().await.expect("queue_len"),
        8,
        "last change: Enqueue"
    );
    assert!(store.active_builds().await.expect("active").is_empty());
    assert!(store.get_project("p").await.expect("get").is_some());
}

#[tokio::test]
async fn embedded_directory_opens_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _store = EmbeddedStore::open(dir.path()).expect("open");
    let second = EmbeddedStore::open(dir.path());
    let err = second.err().expect("a second open is refused").to_string();
    assert!(err.contains("open in another process"), "{err}");
}

#[tokio::test]
async fn embedded_logs_are_removed_only_while_the_store_is_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let kept = create(&store, build("p", 0)).await;
    store
        .append_log(&id(&kept), 0, b"hello\n")
        .await
        .expect("log");
    let open = EmbeddedStore::remove_logs(dir.path()).expect_err("the store is open");
    assert!(matches!(
        open,
        kiln_coordinator::store::StoreError::Io(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
    ));
    assert_eq!(store.log_len(&id(&kept)).await.expect("len"), 1);
    drop(store);
    EmbeddedStore::remove_logs(dir.path()).expect("closed");
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(get(&store, &id(&kept)).await, kept, "the build stays");
    assert_eq!(store.log_len(&id(&kept)).await.expect("len"), 0);
}

/// Group commit: many concurrent callers share fsyncs. Prints the rate; asserts a floor far
/// below it so a slow CI disk does not fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_group_commit_throughput() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let (tasks, per_task) = (256, 40);
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut row = create(&*store, build("p", 0)).await;
                for _ in 1..per_task {
                    row = update(&*store, row, QueueChange::Keep).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("task");
    }
    let rate = f64::from(tasks * per_task) / started.elapsed().as_secs_f64();
    println!("embedded store: {rate:.0} durable mutations/s with {tasks} concurrent callers");
    assert!(rate > 1_000.0, "{rate:.0} mutations/s");
}

// ---- Redis only.

/// A Redis that fsyncs every write keeps every build across its own restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_everything_with_appendonly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = RedisServer::start_durable(dir.path());
    let store = RedisStore::connect(&server.url(), "kiln:")
        .await
        .expect("connect");
    let queued = create(&store, build("p", 3)).await;
    let claimed = update(&store, create(&store, build("p", 0)).await, CLAIM).await;
    drop(store);
    drop(server);

    let server = RedisServer::start_durable(dir.path());
    let store = RedisStore::connect(&server.url(), "kiln:")
        .await
        .expect("connect");
    assert_eq!(get(&store, &id(&queued)).await, queued);
    assert_eq!(get(&store, &id(&claimed)).await, claimed);
    assert_eq!(store.queue_head(5).await.expect("head"), [id(&queued)]);
    assert_eq!(number(&create(&store, build("p", 0)).await), 3);
}

// ---- AnyStore picks the backend from the URL; prefixes keep Redis users apart.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_store_opens_the_backend_its_url_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state");
    let url = format!("file:{}", path.display());
    let embedded = AnyStore::open(&url, "ignored").await.expect("open");
    assert!(matches!(embedded, AnyStore::Embedded(_)));
    let created = create(&embedded, build("p", 0)).await;
    assert_eq!(get(&embedded, &id(&created)).await, created);
    drop(embedded);
    let plain_path = path.to_str().expect("utf-8 path");
    let embedded = AnyStore::open(plain_path, "").await.expect("open");
    assert_eq!(get(&embedded, &id(&created)).await, created);

    let server = RedisServer::start(dir.path());
    let one = AnyStore::open(&server.url(), "one:")
        .await
        .expect("connect");
    let two = AnyStore::open(&server.url(), "two:")
        .await
        .expect("connect");
    assert!(matches!(one, AnyStore::Redis(_)));
    let created = create(&one, build("p", 0)).await;
    assert_eq!(get(&one, &id(&created)).await, created);
    assert_eq!(two.get_build(&id(&created)).await.expect("get"), None);
    assert_eq!(number(&create(&two, build("p", 0)).await), 1);
}
