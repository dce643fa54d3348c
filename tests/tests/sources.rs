//! Uploaded sources through real processes: `.kilnignore` keeps files out of the build, and a
//! checkout the server already has is not sent again.

use std::time::Duration;

use kiln_tests::{
    checkout, client, kiln, require_docker, start_coordinator, start_worker, wait_complete,
};

const LIST: &str =
    "version: 0.2\nphases:\n  build:\n    commands:\n      - find . -type f | sort\n";

#[tokio::test(flavor = "multi_thread")]
async fn kilnignore_and_unchanged_sources() {
    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let (_c, addr) = start_coordinator(data.path(), &[]);
    let _w = start_worker("w-src", addr, &[]);
    let server = format!("http://{addr}");
    let src = checkout(&[
        ("buildspec.yml", LIST),
        (".kilnignore", "target/\n*.tmp\n"),
        ("target/big.bin", "not for the build"),
        ("notes.tmp", "scratch"),
        ("src/lib.rs", "pub fn f() {}\n"),
    ]);
    let dir = src.path().to_str().expect("utf-8");
    let start = || kiln(&["start", dir, "--json", "--server", &server], &[]);

    let first = start();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(!String::from_utf8_lossy(&first.stderr).contains("not uploaded again"));
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json");
    let id = first["id"].as_str().expect("id").to_string();
    let mut c = client(addr, None).await;
    let build = wait_complete(&mut c, &id, Duration::from_secs(120)).await;
    assert_eq!(build.build_status, "SUCCEEDED");
    let log = String::from_utf8_lossy(&kiln(&["logs", &id, "--server", &server], &[]).stdout)
        .into_owned();
    assert!(
        log.contains("./src/lib.rs") && log.contains("./.kilnignore"),
        "{log}"
    );
    assert!(
        !log.contains("big.bin") && !log.contains("notes.tmp"),
        "{log}"
    );

    // The same checkout again: the server has the archive, nothing is sent.
    let second = start();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("the server has this source already"),
        "{stderr}"
    );
    let second: serde_json::Value = serde_json::from_slice(&second.stdout).expect("json");
    assert_eq!(second["sourceDigest"], first["sourceDigest"]);
    // A changed file is sent.
    std::fs::write(src.path().join("src/lib.rs"), "pub fn g() {}\n").expect("write");
    let third = start();
    assert!(third.status.success());
    assert!(!String::from_utf8_lossy(&third.stderr).contains("not uploaded again"));
    let third: serde_json::Value = serde_json::from_slice(&third.stdout).expect("json");
    assert_ne!(third["sourceDigest"], first["sourceDigest"]);
}
