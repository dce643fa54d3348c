//! Sources and artifacts through real processes: `.kilnignore` keeps files out of the build, a
//! checkout the server already has is not sent again, and an artifact download resumes.

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

/// The whole artifacts tar of a build, from byte `offset`, through the API.
async fn tar_of(addr: std::net::SocketAddr, id: &str, offset: u64) -> Vec<u8> {
    let mut stream = client(addr, None)
        .await
        .download_artifact(kiln_proto::v1::DownloadArtifactRequest {
            id: id.to_string(),
            offset,
        })
        .await
        .expect("DownloadArtifact")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        bytes.extend(chunk.data);
    }
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_artifact_download_resumes_and_a_corrupt_one_is_refused() {
    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let (_c, addr) = start_coordinator(data.path(), &[]);
    let _w = start_worker("w-art", addr, &[]);
    let server = format!("http://{addr}");
    let src = checkout(&[(
        "buildspec.yml",
        "version: 0.2\nphases:\n  build:\n    commands:\n      - head -c 3000000 /dev/urandom > out.bin\nartifacts:\n  files:\n    - out.bin\n",
    )]);
    let id = kiln_tests::start(addr, src.path(), &[]);
    let mut c = client(addr, None).await;
    let build = wait_complete(&mut c, &id, Duration::from_secs(120)).await;
    assert_eq!(build.build_status, "SUCCEEDED");
    let whole = tar_of(addr, &id, 0).await;
    assert_eq!(whole.len() as u64, build.artifacts_size);
    assert_eq!(tar_of(addr, &id, 1000).await, whole[1000..]);
    let hex = build.artifacts_digest.trim_start_matches("sha256:");
    let part_name = format!(".kiln-artifacts-{}.part", &hex[..16]);
    let download = |dir: &std::path::Path| {
        kiln(
            &[
                "artifacts",
                &id,
                "-o",
                dir.to_str().expect("utf-8"),
                "--server",
                &server,
            ],
            &[],
        )
    };

    // A reference download, then one that finds half of the tar already there.
    let reference = tempfile::tempdir().expect("dir");
    assert!(download(reference.path()).status.success());
    let expected = std::fs::read(reference.path().join("primary/out.bin")).expect("out.bin");
    assert_eq!(expected.len(), 3_000_000);
    assert!(
        !reference.path().join(&part_name).exists(),
        "no partial left"
    );
    let resumed = tempfile::tempdir().expect("dir");
    let half = whole.len() / 2;
    std::fs::write(resumed.path().join(&part_name), &whole[..half]).expect("partial");
    let out = download(resumed.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "resuming the download of build {id} at byte {half}"
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(resumed.path().join("primary/out.bin")).expect("out.bin"),
        expected
    );
    assert!(!resumed.path().join(&part_name).exists());

    // A partial download that went wrong is refused whole, removed, and the next run succeeds.
    let corrupt = tempfile::tempdir().expect("dir");
    std::fs::write(corrupt.path().join(&part_name), vec![0u8; half]).expect("partial");
    let out = download(corrupt.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("do not match their digest"), "{stderr}");
    assert!(
        !corrupt.path().join(&part_name).exists(),
        "the bad download was removed"
    );
    assert!(
        !corrupt.path().join("primary").exists(),
        "nothing was extracted"
    );
    assert!(download(corrupt.path()).status.success());
    assert_eq!(
        std::fs::read(corrupt.path().join("primary/out.bin")).expect("out.bin"),
        expected
    );
}
