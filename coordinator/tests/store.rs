//! The one test suite of `StateStore`, run against both backends: the embedded store in a temp
//! directory and the Redis store on a real `redis-server` (see `common`). What only one backend
//! has is tested in `store_backends.rs`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::fixtures::{build, create, create_with, get, id, number, update, CLAIM, NOW_MS};
use common::RedisServer;
use kiln_coordinator::store::{
    cache_slot, BuildFilter, Created, EmbeddedStore, QueueChange, RedisStore, StateStore,
    StoreError, Updated,
};
use kiln_proto::v1::{CacheEntry, Lease, Project, StoredBuild};
use tempfile::TempDir;

/// A backend under test, which can be opened again (after the last store is dropped) to see
/// what a coordinator restart keeps.
trait Backend {
    type Store: StateStore;
    async fn open(&self) -> Self::Store;
}

struct Embedded(TempDir);

impl Embedded {
    fn new() -> Embedded {
        Embedded(tempfile::tempdir().expect("temp dir"))
    }
}

impl Backend for Embedded {
    type Store = EmbeddedStore;
    async fn open(&self) -> EmbeddedStore {
        EmbeddedStore::open(self.0.path()).expect("open the embedded store")
    }
}

struct Redis {
    server: RedisServer,
    _dir: TempDir,
}

impl Redis {
    fn new() -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        Redis {
            server: RedisServer::start(dir.path()),
            _dir: dir,
        }
    }
}

impl Backend for Redis {
    type Store = RedisStore;
    async fn open(&self) -> RedisStore {
        RedisStore::connect(&self.server.url(), "kiln-test:")
            .await
            .expect("connect to redis-server")
    }
}

/// Runs each generic test against both backends.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Embedded::new()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Redis::new()).await;
                }
            )*
        }
    };
}

on_both_backends!(
    numbers_are_per_project_and_never_repeat,
    concurrent_creates_get_distinct_contiguous_numbers,
    idempotency_token_returns_the_existing_build,
    concurrent_updates_from_one_version_conflict,
    claim_respects_the_concurrent_build_limit,
    queue_orders_by_priority_then_fifo_and_requeue_keeps_the_place,
    queue_expired_lists_due_queued_builds,
    active_builds_are_claimed_and_unfinished,
    list_builds_filters_and_pages_without_gaps_or_repeats,
    projects_crud,
    cache_index_keeps_keyed_entries_immutable_and_survives_reopening,
    logs_append_in_order_and_read_with_offsets,
    reopening_keeps_everything,
    racing_claims_win_each_build_once,
);

async fn numbers_are_per_project_and_never_repeat(backend: impl Backend) {
    let store = backend.open().await;
    let mut seqs = Vec::new();
    for (project, expected) in [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)] {
        let created = create(&store, build(project, 0)).await;
        assert_eq!(number(&created), expected);
        assert_eq!(created.version, 1);
        let spec = created.spec.as_ref().expect("spec");
        assert_eq!(
            spec.build_number, expected,
            "the assignment carries the number"
        );
        assert_eq!(
            get(&store, &id(&created)).await,
            created,
            "stored as returned"
        );
        seqs.push(created.queue_seq);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "queue_seqs grow: {seqs:?}"
    );
    drop(store);

    let store = backend.open().await;
    assert_eq!(number(&create(&store, build("a", 0)).await), 4);
    assert_eq!(number(&create(&store, build("b", 0)).await), 3);
    assert!(create(&store, build("c", 0)).await.queue_seq > seqs[4]);
}

async fn concurrent_creates_get_distinct_contiguous_numbers(backend: impl Backend) {
    let store = Arc::new(backend.open().await);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..50 {
                    let created = create(&*store, build("p", 0)).await;
                    got.push((number(&created), created.queue_seq));
                }
                got
            })
        })
        .collect();
    let mut numbers = Vec::new();
    let mut seqs = HashSet::new();
    for task in tasks {
        for (number, seq) in task.await.expect("task") {
            numbers.push(number);
            assert!(seqs.insert(seq), "queue_seq {seq} given twice");
        }
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=400).collect::<Vec<u64>>());
    assert_eq!(store.queue_len().await.expect("queue_len"), 400);
}

async fn idempotency_token_returns_the_existing_build(backend: impl Backend) {
    let store = backend.open().await;
    let first = create_with(&store, build("p", 0), Some("start-1")).await;
    let retry = build("p", 0);
    let retry_id = id(&retry);
    let again = store.create_build(retry, Some("start-1".into())).await;
    let again = again.expect("create");
    assert_eq!(again, Created::Existing(first.clone()));
    assert_eq!(store.get_build(&retry_id).await.expect("get"), None);

    // Same id without a token: the stored build too.
    let again = store
        .create_build(first.clone(), None)
        .await
        .expect("create");
    assert_eq!(again, Created::Existing(first.clone()));
    assert_eq!(store.queue_len().await.expect("queue_len"), 1);

    // Another token creates another build, numbered next.
    let other = create_with(&store, build("p", 0), Some("start-2")).await;
    assert_eq!(number(&other), 2);
}

async fn concurrent_updates_from_one_version_conflict(backend: impl Backend) {
    let store = Arc::new(backend.open().await);
    let created = create(&*store, build("p", 0)).await;
    let racers: Vec<_> = ["SUCCEEDED", "FAILED"]
        .into_iter()
        .map(|status| {
            let (store, mut row) = (store.clone(), created.clone());
            row.build.as_mut().expect("build").build_status = status.into();
            tokio::spawn(async move { store.update_build(row, QueueChange::Finish).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for racer in racers {
        outcomes.push(racer.await.expect("task").expect("update"));
    }
    let done: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Updated::Done(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 1, "{outcomes:?}");
    assert!(outcomes.contains(&Updated::Conflict), "{outcomes:?}");
    assert_eq!(done[0].version, 2);
    assert_eq!(&get(&*store, &id(&created)).await, done[0]);

    let stale = store
        .update_build(created.clone(), QueueChange::Keep)
        .await
        .expect("update");
    assert_eq!(stale, Updated::Conflict);
    let missing = store
        .update_build(build("p", 0), QueueChange::Keep)
        .await
        .expect("update");
    assert_eq!(missing, Updated::Missing);
}

async fn claim_respects_the_concurrent_build_limit(backend: impl Backend) {
    let store = backend.open().await;
    let limit = QueueChange::Claim { limit: 2 };
    let mut builds = Vec::new();
    for _ in 0..3 {
        builds.push(create(&store, build("p", 0)).await);
    }
    let other = create(&store, build("q", 0)).await;
    let b0 = update(&store, builds[0].clone(), limit).await;
    update(&store, builds[1].clone(), limit).await;
    let refused = store.update_build(builds[2].clone(), limit).await;
    assert_eq!(refused.expect("update"), Updated::LimitReached);
    assert_eq!(get(&store, &id(&builds[2])).await, builds[2], "unchanged");
    assert_eq!(
        store.queue_head(10).await.expect("queue_head"),
        [id(&builds[2]), id(&other)]
    );
    // Another project's limit is its own; a build already claimed does not count against itself.
    update(&store, other, QueueChange::Claim { limit: 1 }).await;
    let b0 = update(&store, b0, limit).await;

    update(&store, b0, QueueChange::Finish).await;
    update(&store, builds[2].clone(), limit).await;
    assert_eq!(store.queue_len().await.expect("queue_len"), 0);
}

async fn queue_orders_by_priority_then_fifo_and_requeue_keeps_the_place(backend: impl Backend) {
    let store = backend.open().await;
    let low = create(&store, build("p", 0)).await;
    let first = create(&store, build("p", 5)).await;
    let second = create(&store, build("p", 5)).await;
    let high = create(&store, build("p", 10)).await;
    let clamped = create(&store, build("p", 500)).await;
    let negative = create(&store, build("p", -3)).await;
    let order = |builds: &[&StoredBuild]| builds.iter().map(|b| id(b)).collect::<Vec<_>>();
    let head = store.queue_head(10).await.expect("queue_head");
    assert_eq!(
        head,
        order(&[&clamped, &high, &first, &second, &low, &negative])
    );
    assert_eq!(store.queue_head(2).await.expect("head"), head[..2]);
    assert_eq!(store.queue_len().await.expect("queue_len"), 6);

    let first = update(&store, first, CLAIM).await;
    assert_eq!(
        store.queue_head(10).await.expect("queue_head"),
        order(&[&clamped, &high, &second, &low, &negative])
    );
    // Lease lost: back in the queue, ahead of the build queued after it.
    let mut requeued = first.clone();
    requeued.build.as_mut().expect("build").worker_id = String::new();
    update(&store, requeued, QueueChange::Enqueue).await;
    update(&store, low, QueueChange::Finish).await;
    assert_eq!(
        store.queue_head(10).await.expect("queue_head"),
        order(&[&clamped, &high, &first, &second, &negative])
    );
    // Keep leaves the queue alone, but a queued build's rank follows its priority.
    update(&store, second.clone(), QueueChange::Keep).await;
    assert_eq!(store.queue_len().await.expect("queue_len"), 5);
    let mut urgent = get(&store, &id(&negative)).await;
    urgent.build.as_mut().expect("build").priority = 100;
    urgent.queued_deadline_ms = 1;
    update(&store, urgent, QueueChange::Keep).await;
    assert_eq!(
        store.queue_head(10).await.expect("queue_head"),
        order(&[&clamped, &negative, &high, &first, &second])
    );
    assert_eq!(
        store.queue_expired(1, 10).await.expect("expired"),
        [id(&negative)]
    );
}

async fn queue_expired_lists_due_queued_builds(backend: impl Backend) {
    let store = backend.open().await;
    let mut due = Vec::new();
    for deadline in [300, 100, 200] {
        let mut row = build("p", 0);
        row.queued_deadline_ms = deadline;
        due.push(create(&store, row).await);
    }
    let ids = |builds: &[&StoredBuild]| builds.iter().map(|b| id(b)).collect::<Vec<_>>();
    let expired = store.queue_expired(200, 10).await.expect("expired");
    assert_eq!(expired, ids(&[&due[1], &due[2]]), "earliest first");
    assert_eq!(
        store.queue_expired(200, 1).await.expect("expired"),
        expired[..1]
    );
    assert!(store
        .queue_expired(99, 10)
        .await
        .expect("expired")
        .is_empty());

    update(&store, due[1].clone(), CLAIM).await;
    let expired = store.queue_expired(1_000, 10).await.expect("expired");
    assert_eq!(expired, ids(&[&due[2], &due[0]]));
}

async fn active_builds_are_claimed_and_unfinished(backend: impl Backend) {
    let store = backend.open().await;
    let a = create(&store, build("p", 0)).await;
    let b = create(&store, build("q", 0)).await;
    create(&store, build("p", 0)).await;
    assert!(store.active_builds().await.expect("active").is_empty());
    let a = update(&store, a, CLAIM).await;
    let b = update(&store, b, CLAIM).await;
    let mut active = store.active_builds().await.expect("active");
    active.sort();
    let mut expected = vec![id(&a), id(&b)];
    expected.sort();
    assert_eq!(active, expected);
    update(&store, a, QueueChange::Finish).await;
    let b = update(&store, b, QueueChange::Keep).await;
    assert_eq!(store.active_builds().await.expect("active"), [id(&b)]);
    update(&store, b, QueueChange::Enqueue).await;
    assert!(store.active_builds().await.expect("active").is_empty());
}

/// Pages through `list_builds` `size` at a time.
async fn all_pages(store: &impl StateStore, filter: &BuildFilter, size: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_builds(filter, after.as_deref(), size)
            .await
            .expect("list");
        assert!(page.len() <= size);
        let Some(last) = page.last() else {
            return ids;
        };
        after = Some(id(last));
        ids.extend(page.iter().map(id));
    }
}

async fn list_builds_filters_and_pages_without_gaps_or_repeats(backend: impl Backend) {
    let store = backend.open().await;
    let mut created = Vec::new();
    for i in 0..30i64 {
        let mut row = build(if i % 3 == 0 { "b" } else { "a" }, 0);
        row.build.as_mut().expect("build").queued_time_ms = NOW_MS + i;
        let mut row = create(&store, row).await;
        if i % 4 == 0 {
            row.build.as_mut().expect("build").build_status = "SUCCEEDED".into();
            row = update(&store, row, QueueChange::Finish).await;
        }
        created.push(row);
    }
    let newest_first = |keep: &dyn Fn(usize, &StoredBuild) -> bool| -> Vec<String> {
        let kept = created.iter().enumerate().filter(|(i, b)| keep(*i, b));
        kept.rev().map(|(_, b)| id(b)).collect()
    };
    let everything = BuildFilter::default();
    let all = newest_first(&|_, _| true);
    for size in [1, 4, 7, 30, 100] {
        assert_eq!(
            all_pages(&store, &everything, size).await,
            all,
            "page size {size}"
        );
    }
    let project_b = BuildFilter {
        project: Some("b".into()),
        ..Default::default()
    };
    let of_b = newest_first(&|i, _| i % 3 == 0);
    assert_eq!(all_pages(&store, &project_b, 3).await, of_b);
    let succeeded_a = BuildFilter {
        project: Some("a".into()),
        status: Some("SUCCEEDED".into()),
        ..Default::default()
    };
    let expected = newest_first(&|i, _| i % 3 != 0 && i % 4 == 0);
    assert_eq!(all_pages(&store, &succeeded_a, 2).await, expected);
    let window = BuildFilter {
        from_ms: Some(NOW_MS + 10),
        to_ms: Some(NOW_MS + 20),
        ..Default::default()
    };
    let in_window = newest_first(&|i, _| (10..20).contains(&i));
    assert_eq!(all_pages(&store, &window, 4).await, in_window);
    let nobody = BuildFilter {
        status: Some("STOPPED".into()),
        ..Default::default()
    };
    assert!(all_pages(&store, &nobody, 5).await.is_empty());
    assert!(store
        .list_builds(&everything, Some("a:no-such-build"), 5)
        .await
        .expect("list")
        .is_empty());
    assert!(store
        .list_builds(&everything, None, 0)
        .await
        .expect("list")
        .is_empty());

    // New builds during paging appear on no later page: the cursor is a place, not an offset.
    let first_page = store
        .list_builds(&everything, None, 10)
        .await
        .expect("list");
    create(&store, build("a", 0)).await;
    let cursor = id(first_page.last().expect("a full page"));
    let rest = store
        .list_builds(&everything, Some(&cursor), 100)
        .await
        .expect("list");
    let paged: Vec<String> = first_page.iter().chain(&rest).map(id).collect();
    assert_eq!(paged, all);
}

async fn projects_crud(backend: impl Backend) {
    let store = backend.open().await;
    let project = |name: &str, description: &str| Project {
        name: name.into(),
        description: description.into(),
        concurrent_build_limit: 3,
        ..Default::default()
    };
    assert!(store
        .put_project(project("web", "v1"), true)
        .await
        .expect("put"));
    assert!(!store
        .put_project(project("web", "v2"), true)
        .await
        .expect("put"));
    let web = store.get_project("web").await.expect("get");
    assert_eq!(
        web,
        Some(project("web", "v1")),
        "create_only stores nothing"
    );
    assert!(store
        .put_project(project("web", "v3"), false)
        .await
        .expect("put"));
    assert!(!store
        .put_project(project("api", "a"), false)
        .await
        .expect("put"));
    let all = store.list_projects().await.expect("list");
    assert_eq!(all, [project("api", "a"), project("web", "v3")]);
    assert!(store.delete_project("web").await.expect("delete"));
    assert!(!store.delete_project("web").await.expect("delete"));
    assert_eq!(store.get_project("web").await.expect("get"), None);
    assert_eq!(
        store.list_projects().await.expect("list"),
        [project("api", "a")]
    );
}

fn cache(project: &str, paths: &[&str], key: &str, segment: &str) -> CacheEntry {
    CacheEntry {
        project: project.into(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        key: key.into(),
        segments: vec![segment.into()],
        size: 10,
        files: 1,
        created_ms: NOW_MS,
        last_used_ms: NOW_MS,
        build_id: format!("{project}:b"),
    }
}

async fn sorted_caches(store: &impl StateStore, project: &str) -> Vec<CacheEntry> {
    let mut all = store.caches(project).await.expect("caches");
    all.sort_by_key(cache_slot);
    all
}

async fn cache_index_keeps_keyed_entries_immutable_and_survives_reopening(backend: impl Backend) {
    let store = backend.open().await;
    let keyed = cache("web", &["node_modules/**/*"], "npm-1", "sha256:a");
    assert!(store.put_cache(keyed.clone(), true).await.expect("put"));
    let again = cache("web", &["node_modules/**/*"], "npm-1", "sha256:b");
    assert!(
        !store.put_cache(again, true).await.expect("put"),
        "a keyed entry is immutable"
    );
    // The same key with other paths is another cache.
    let other_paths = cache("web", &["/root/.m2/**/*"], "npm-1", "sha256:c");
    assert_ne!(cache_slot(&keyed), cache_slot(&other_paths));
    assert!(store
        .put_cache(other_paths.clone(), true)
        .await
        .expect("put"));
    // The rolling cache is replaced by each save.
    let rolling = cache("web", &["node_modules/**/*"], "", "sha256:d");
    assert!(store.put_cache(rolling, false).await.expect("put"));
    let rolling = cache("web", &["node_modules/**/*"], "", "sha256:e");
    assert!(store.put_cache(rolling.clone(), false).await.expect("put"));
    // Another project's caches are apart, even with a name that extends this one's.
    let api = cache("web2", &["node_modules/**/*"], "npm-1", "sha256:f");
    assert!(store.put_cache(api.clone(), true).await.expect("put"));
    let mut want = vec![keyed.clone(), other_paths.clone(), rolling.clone()];
    want.sort_by_key(cache_slot);
    assert_eq!(sorted_caches(&store, "web").await, want);
    assert_eq!(
        sorted_caches(&store, "web2").await,
        std::slice::from_ref(&api)
    );
    assert_eq!(sorted_caches(&store, "nothing").await, []);
    assert_eq!(
        store.cache_projects().await.expect("projects"),
        ["web", "web2"]
    );

    // Marking used changes only the time, and never brings back a removed entry.
    store
        .touch_cache("web", &cache_slot(&keyed), NOW_MS + 5)
        .await
        .expect("touch");
    store
        .touch_cache("web", "0000/none", NOW_MS + 5)
        .await
        .expect("touch nothing");
    let used = sorted_caches(&store, "web").await;
    let used = used
        .iter()
        .find(|e| e.key == "npm-1" && e.paths == keyed.paths);
    assert_eq!(used.map(|e| e.last_used_ms), Some(NOW_MS + 5));
    let keyed = CacheEntry {
        last_used_ms: NOW_MS + 5,
        ..keyed
    };
    // A delete takes the saves it was given, whenever they were last used, and nothing else:
    // not an entry that is not there, nor a rolling cache saved again since it was judged.
    let gone = [
        CacheEntry {
            last_used_ms: NOW_MS + 9,
            ..other_paths.clone()
        },
        cache("web", &["none/**/*"], "", "sha256:0"),
        CacheEntry {
            created_ms: NOW_MS - 1,
            ..rolling.clone()
        },
    ];
    assert_eq!(store.delete_caches("web", &gone).await.expect("delete"), 1);
    assert_eq!(store.delete_caches("web", &gone).await.expect("delete"), 0);
    drop(store);

    let store = backend.open().await;
    let mut want = vec![keyed, rolling];
    want.sort_by_key(cache_slot);
    assert_eq!(sorted_caches(&store, "web").await, want);
    assert_eq!(sorted_caches(&store, "web2").await, [api]);
}

async fn logs_append_in_order_and_read_with_offsets(backend: impl Backend) {
    let store = backend.open().await;
    let build = "p:logs";
    assert_eq!(store.log_len(build).await.expect("len"), 0);
    assert!(store.read_log(build, 0, 10).await.expect("read").is_empty());
    for (seq, data) in [b"hello ".as_slice(), b"", b"world\n"].iter().enumerate() {
        let next = store
            .append_log(build, seq as u64, data)
            .await
            .expect("append");
        assert_eq!(next, seq as u64 + 1);
    }
    // A chunk resent after a lost ack is ignored; one that skips ahead is refused.
    assert_eq!(
        store.append_log(build, 0, b"HELLO ").await.expect("append"),
        3
    );
    match store.append_log(build, 5, b"?").await {
        Err(StoreError::LogGap { expected, got, .. }) => assert_eq!((expected, got), (3, 5)),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(store.log_len(build).await.expect("len"), 3);
    let chunks = store.read_log(build, 0, 10).await.expect("read");
    let summary: Vec<_> = chunks
        .iter()
        .map(|c| (c.seq, c.offset, &c.data[..]))
        .collect();
    assert_eq!(
        summary,
        [
            (0, 0, &b"hello "[..]),
            (1, 6, &b""[..]),
            (2, 6, &b"world\n"[..])
        ]
    );
    let tail = store.read_log(build, 2, 10).await.expect("read");
    assert_eq!((tail.len(), tail[0].offset), (1, 6));
    assert!(store.read_log(build, 3, 10).await.expect("read").is_empty());
    assert!(store.read_log(build, 0, 0).await.expect("read").is_empty());

    // Long logs: reads from the middle find their offsets.
    let long = "p:long";
    let chunk = |seq: u64| vec![b'a' + (seq % 26) as u8; (seq % 7) as usize * 10];
    for seq in 0..300 {
        store
            .append_log(long, seq, &chunk(seq))
            .await
            .expect("append");
    }
    let offset_of = |seq: u64| (0..seq).map(|s| chunk(s).len() as u64).sum::<u64>();
    for from in [0, 1, 63, 64, 65, 130, 299] {
        let read = store.read_log(long, from, 5).await.expect("read");
        let expected: Vec<_> = (from..300.min(from + 5))
            .map(|seq| (seq, offset_of(seq), chunk(seq)))
            .collect();
        let got: Vec<_> = read
            .into_iter()
            .map(|c| (c.seq, c.offset, c.data))
            .collect();
        assert_eq!(got, expected, "from {from}");
    }
    drop(store);
    let store = backend.open().await;
    assert_eq!(store.log_len(long).await.expect("len"), 300);
    assert_eq!(
        store.append_log(long, 300, b"more").await.expect("append"),
        301
    );
    let last = store.read_log(long, 300, 1).await.expect("read");
    assert_eq!(last[0].offset, offset_of(300));
}

async fn reopening_keeps_everything(backend: impl Backend) {
    let store = backend.open().await;
    let queued = create(&store, build("p", 7)).await;
    let claimed = create(&store, build("p", 0)).await;
    let claimed = update(&store, claimed, QueueChange::Claim { limit: 1 }).await;
    let finished = update(&store, create(&store, build("q", 0)).await, CLAIM).await;
    let finished = update(&store, finished, QueueChange::Finish).await;
    let tokened = create_with(&store, build("q", 0), Some("retry-token")).await;
    let project = Project {
        name: "p".into(),
        concurrent_build_limit: 1,
        ..Default::default()
    };
    store.put_project(project.clone(), true).await.expect("put");
    let head = store.queue_head(10).await.expect("head");
    drop(store);

    let store = backend.open().await;
    for b in [&queued, &claimed, &finished, &tokened] {
        assert_eq!(&get(&store, &id(b)).await, b);
    }
    assert_eq!(store.queue_head(10).await.expect("head"), head);
    assert_eq!(store.active_builds().await.expect("active"), [id(&claimed)]);
    assert_eq!(store.get_project("p").await.expect("get"), Some(project));
    let again = store
        .create_build(build("q", 0), Some("retry-token".into()))
        .await;
    let again = again.expect("create");
    assert_eq!(again, Created::Existing(tokened));
    // The running set survived: the project's limit of one is still taken.
    let refused = store
        .update_build(queued.clone(), QueueChange::Claim { limit: 1 })
        .await
        .expect("update");
    assert_eq!(refused, Updated::LimitReached);
    update(&store, queued, CLAIM).await;
    assert_eq!(number(&create(&store, build("q", 0)).await), 3);
}

async fn racing_claims_win_each_build_once(backend: impl Backend) {
    let store = Arc::new(backend.open().await);
    for _ in 0..100 {
        create(&*store, build("p", 0)).await;
    }
    let claimers: Vec<_> = (0..16)
        .map(|worker| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut won = Vec::new();
                loop {
                    let head = store.queue_head(100).await.expect("head");
                    if head.is_empty() {
                        return won;
                    }
                    for id in head {
                        let Some(mut row) = store.get_build(&id).await.expect("get") else {
                            continue;
                        };
                        if row.lease.is_some() {
                            continue;
                        }
                        row.lease = Some(Lease {
                            worker_id: format!("worker-{worker}"),
                            epoch: 1,
                            expires_ms: NOW_MS,
                        });
                        match store.update_build(row, CLAIM).await.expect("claim") {
                            Updated::Done(_) => won.push(id),
                            Updated::Conflict => {}
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    let mut won = Vec::new();
    for claimer in claimers {
        won.extend(claimer.await.expect("task"));
    }
    let distinct: HashSet<_> = won.iter().collect();
    assert_eq!((won.len(), distinct.len()), (100, 100));
    assert_eq!(store.active_builds().await.expect("active").len(), 100);
}
