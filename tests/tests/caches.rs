//! Build caches end to end (semantics §6): two coordinators sharing a real `redis-server` (the
//! cache index) and a real S3-compatible server (`s3s-fs`, the segments), a worker on each. A
//! cache saved by a build on worker A comes back in the next build on worker B with its modes and
//! links; keyed caches fall back by prefix and never change; a damaged cache or a store that goes
//! down leaves the build to succeed with a warning.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_tests::s3::{self, S3Server};
use kiln_tests::{
    apply_project, checkout, client, get, kiln, require_docker, start, wait_complete, Proc,
    RedisServer,
};

/// Two restores in one buildspec: relative paths (under the source) and absolute ones, a mode,
/// a symlink, and a file big enough for several segments.
const ROLLING: &str = r#"version: 0.2
phases:
  build:
    commands:
      - if [ -f deps/made-by ]; then echo "restored deps of $(cat deps/made-by)"; else mkdir -p deps/sub && echo "$CODEBUILD_BUILD_ID" > deps/made-by && head -c 40000000 /dev/urandom > deps/sub/big.bin; fi
      - if [ -f /root/.m2/settings ]; then echo "restored m2 mode $(stat -c %a /root/.m2/settings) link $(readlink /root/.m2/current)"; else mkdir -p /root/.m2 && echo m2 > /root/.m2/settings && chmod 600 /root/.m2/settings && ln -s settings /root/.m2/current; fi
      - sleep ${HOLD:-0}
cache:
  paths:
    - deps/**/*
    - /root/.m2/**/*
"#;

const KEYED: &str = r#"version: 0.2
phases:
  build:
    commands:
      - cat /cache-dir/which 2>/dev/null || echo "nothing restored"
      - mkdir -p /cache-dir && echo "saved with $LOCK" > /cache-dir/which
cache:
  key: deps-$LOCK
  fallback-keys:
    - deps-
  paths:
    - /cache-dir/**/*
"#;

fn coordinator(
    name: &str,
    data: &Path,
    redis: &str,
    prefix: &str,
    config: &Path,
) -> (Proc, SocketAddr) {
    let (proc, addr) = Proc::kiln(
        name,
        &[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().expect("utf-8"),
            "--state",
            redis,
            "--redis-prefix",
            prefix,
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        &[],
        true,
    );
    (proc, addr.expect("address"))
}

fn store_config(dir: &Path, s3: &S3Server, prefix: &str) -> std::path::PathBuf {
    let path = dir.join("coordinator.toml");
    let text = format!(
        "[store]\nbackend = \"s3\"\nendpoint = \"{}\"\nregion = \"{}\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\npath_style = true\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        s3.endpoint(),
        s3::REGION,
        s3::BUCKET,
        s3::ACCESS_KEY,
        s3::SECRET_KEY
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn worker(id: &str, addr: SocketAddr) -> Proc {
    let url = format!("http://{addr}");
    Proc::kiln(
        id,
        &["worker", "--coordinator", &url, "--id", id],
        &[],
        false,
    )
    .0
}

fn log_of(addr: SocketAddr, id: &str) -> String {
    let server = format!("http://{addr}");
    let out = kiln(&["logs", id, "--server", &server], &[]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a build of `project` from `dir` to the end; its id and log.
async fn build(addr: SocketAddr, dir: &Path, project: &str, env: &[&str]) -> (String, String) {
    let mut args = vec!["--project", project];
    for e in env {
        args.extend(["-e", e]);
    }
    let id = start(addr, dir, &args);
    let done = wait_complete(&mut client(addr, None).await, &id, Duration::from_secs(180)).await;
    let log = log_of(addr, &id);
    assert_eq!(done.build_status, "SUCCEEDED", "{log}");
    (id, log)
}

fn cache_json(addr: SocketAddr, project: &str) -> serde_json::Value {
    let server = format!("http://{addr}");
    let out = kiln(
        &["cache", "list", project, "--json", "--server", &server],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kiln cache list --json")
}

#[tokio::test(flavor = "multi_thread")]
async fn caches_follow_the_project_across_workers_and_coordinators() {
    require_docker();
    let redis = RedisServer::start_throwaway();
    let s3 = S3Server::start();
    let data = tempfile::tempdir().expect("tempdir");
    let prefix = format!("kiln-test-{}:", uuid::Uuid::new_v4().simple());
    let config = store_config(data.path(), &s3, "farm");
    let (d1, d2) = (data.path().join("c1"), data.path().join("c2"));
    let (_c1, a1) = coordinator("coordinator-1", &d1, &redis.url(), &prefix, &config);
    let (_c2, a2) = coordinator("coordinator-2", &d2, &redis.url(), &prefix, &config);
    let file = data.path().join("project.yaml");
    apply_project(&format!("http://{a1}"), &file, "name: cached\n");
    apply_project(&format!("http://{a1}"), &file, "name: keyed\n");
    let src = checkout(&[("buildspec.yml", ROLLING)]);

    // Worker A, on coordinator 1: nothing to restore; the cache is saved.
    let mut a = worker("cache-worker-a", a1);
    let (first, log) = build(a1, src.path(), "cached", &[]).await;
    assert!(
        log.contains("Cache miss: this project has no cache"),
        "{log}"
    );
    assert!(log.contains("Cache saved: 4 files"), "{log}");
    let listed = cache_json(a2, "cached");
    let entry = &listed["caches"][0];
    assert_eq!(entry["key"], "");
    assert_eq!(entry["buildId"], first.as_str());
    assert!(
        entry["size"].as_u64().expect("size") > 40_000_000,
        "{listed}"
    );
    let segments = entry["segments"].as_array().expect("segments").len();
    assert!(segments >= 3, "40 MB in 16 MiB segments at most: {listed}");
    a.kill9();

    // Worker B, on coordinator 2: the same files, mode and link come back; saving the unchanged
    // files uploads nothing.
    let _b = worker("cache-worker-b", a2);
    let (second, log) = build(a2, src.path(), "cached", &[]).await;
    assert_eq!(get(a2, &second).await.project_name, "cached");
    assert!(log.contains(&format!("restored deps of {first}")), "{log}");
    assert!(log.contains("restored m2 mode 600 link settings"), "{log}");
    assert!(log.contains(&format!("saved by build {first}")), "{log}");
    assert!(
        log.contains(&format!("0 of {segments} segments (0 bytes) uploaded")),
        "{log}"
    );

    // Keyed: a miss saves deps-1; deps-2 falls back to it by prefix and saves its own; deps-1
    // again restores exactly and is not saved again.
    let keyed = checkout(&[("buildspec.yml", KEYED)]);
    let (_, log) = build(a2, keyed.path(), "keyed", &["LOCK=1"]).await;
    assert!(log.contains("nothing restored"), "{log}");
    assert!(log.contains("Cache miss: no cache for key deps-1"), "{log}");
    assert!(log.contains("Cache saved under key deps-1"), "{log}");
    let (_, log) = build(a2, keyed.path(), "keyed", &["LOCK=2"]).await;
    assert!(log.contains("saved with 1"), "{log}");
    assert!(log.contains("Cache restored under key deps-1"), "{log}");
    assert!(log.contains("Cache saved under key deps-2"), "{log}");
    let (_, log) = build(a2, keyed.path(), "keyed", &["LOCK=1"]).await;
    assert!(log.contains("saved with 1"), "{log}");
    assert!(
        log.contains("Cache not saved: key deps-1 exists, and a keyed cache never changes"),
        "{log}"
    );
    let (_, log) = build(a2, keyed.path(), "keyed", &["LOCK=3"]).await;
    assert!(log.contains("saved with 2"), "newest fallback first: {log}");
    let keys = |json: serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = json["caches"]
            .as_array()
            .expect("caches")
            .iter()
            .map(|c| c["key"].as_str().expect("key").to_string())
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(cache_json(a1, "keyed")),
        ["deps-1", "deps-2", "deps-3"]
    );
    let server = format!("http://{a1}");
    let out = kiln(
        &[
            "cache", "clear", "keyed", "--key", "deps-2", "--server", &server,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(keys(cache_json(a2, "keyed")), ["deps-1", "deps-3"]);
    let out = kiln(&["cache", "clear", "keyed", "--server", &server], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key KEY, --rolling or --all"));

    // Coordinator 2 served worker B's restores: the rolling hit, a miss, then three hits (the checks
    // before keyed saves are not counted).
    let out = kiln(
        &[
            "cache",
            "stats",
            "--json",
            "--server",
            &format!("http://{a2}"),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    assert_eq!(
        (stats["cacheHits"].as_u64(), stats["cacheMisses"].as_u64()),
        (Some(4), Some(1)),
        "{stats}"
    );
    assert!(
        stats["bytesIn"].as_u64() > Some(0) && stats["bytesOut"].as_u64() > Some(40_000_000),
        "{stats}"
    );

    // A project whose cache type is NO_CACHE neither restores nor saves.
    apply_project(
        &format!("http://{a1}"),
        &file,
        "name: uncached\ncache:\n  type: NO_CACHE\n",
    );
    let (_, log) = build(a2, src.path(), "uncached", &[]).await;
    assert!(
        log.contains("Cache not used: caching is off for this build"),
        "{log}"
    );
    assert!(!log.contains("Cache saved"), "{log}");
    assert_eq!(cache_json(a2, "uncached")["caches"], serde_json::json!([]));

    // A damaged segment, the last one, is refused: the build keeps nothing restored (not even
    // what the sound segments before it hold) and still succeeds. While it runs the store goes down:
    // the save fails with a warning, the build still succeeds.
    let all = listed["caches"][0]["segments"]
        .as_array()
        .expect("segments");
    let last = all.last().and_then(|s| s.as_str()).expect("a segment");
    let object = s3
        .root()
        .join(s3::BUCKET)
        .join("farm/blobs/sha256")
        .join(last.trim_start_matches("sha256:"));
    assert!(object.is_file(), "segment object {}", object.display());
    std::fs::write(&object, b"not the segment").expect("damage");
    let id = start(a2, src.path(), &["--project", "cached", "-e", "HOLD=8"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(a2, &id).await.current_phase != "BUILD" {
        assert!(Instant::now() < deadline, "the build never reached BUILD");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(s3);
    let done = wait_complete(&mut client(a2, None).await, &id, Duration::from_secs(180)).await;
    let log = log_of(a2, &id);
    assert_eq!(done.build_status, "SUCCEEDED", "{log}");
    assert!(log.contains("Cache not restored: "), "{log}");
    // The segments before it were streamed into the container, then taken out again.
    assert!(
        log.contains("files put back before it were removed"),
        "{log}"
    );
    assert!(!log.contains("restored deps of cached:"), "{log}");
    assert!(!log.contains("restored m2 mode 600"), "{log}");
    assert!(log.contains("Cache not saved: "), "{log}");
}
