//! Sources and artifacts through real processes: `.kilnignore` keeps files out of the build, a
//! checkout the server already has is not sent again, an artifact download resumes, and an S3
//! store hands out presigned URLs to artifacts.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use kiln_tests::s3::{self, S3Server};
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
    // 40 files of 400 kB: a download cut in the middle has whole entries behind it, and whole
    // chunks (the server sends up to 1 MiB in one), from whose end it resumes.
    let src = checkout(&[(
        "buildspec.yml",
        "version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir out && for i in $(seq 10 49); do head -c 400000 /dev/urandom > out/f$i.bin; done\nartifacts:\n  files:\n    - 'out/*'\n",
    )]);
    let id = kiln_tests::start(addr, src.path(), &[]);
    let mut c = client(addr, None).await;
    let build = wait_complete(&mut c, &id, Duration::from_secs(120)).await;
    assert_eq!(build.build_status, "SUCCEEDED");
    let whole = tar_of(addr, &id, 0).await;
    assert_eq!(whole.len() as u64, build.artifacts_size);
    assert_eq!(tar_of(addr, &id, 1000).await, whole[1000..]);
    let hex = build.artifacts_digest.trim_start_matches("sha256:");
    let saved_name = format!(".kiln-artifacts-{}.resume", &hex[..16]);
    let staging_name = format!(".kiln-artifacts-{}.staging", &hex[..16]);
    let download = |dir: &Path, server: &str| {
        kiln(
            &[
                "artifacts",
                &id,
                "-o",
                dir.to_str().expect("utf-8"),
                "--server",
                server,
            ],
            &[],
        )
    };

    // This server keeps artifacts in a local directory: no URLs.
    let url = kiln(&["artifacts", &id, "--url", "--server", &server], &[]);
    assert_eq!(url.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&url.stderr);
    assert!(stderr.contains("hands out no artifact URLs"), "{stderr}");

    // A reference download.
    let reference = tempfile::tempdir().expect("dir");
    assert!(download(reference.path(), &server).status.success());
    let expected = files_under(reference.path());
    assert_eq!(expected.len(), 40, "{:?}", expected.keys());
    assert!(expected.values().all(|bytes| bytes.len() == 400_000));
    // Downloading again into the same directory replaces the file and leaves nothing else.
    std::fs::write(reference.path().join("primary/out/f10.bin"), "stale").expect("stale");
    assert!(download(reference.path(), &server).status.success());
    assert_eq!(files_under(reference.path()), expected);
    assert_eq!(
        names(reference.path()),
        ["primary"],
        "no staging or checkpoint left"
    );

    // A download whose connection is cut halfway keeps what it extracted, and the next run
    // asks only for the rest.
    let resumed = tempfile::tempdir().expect("dir");
    let out = download(resumed.path(), &cut_after(addr, whole.len() / 2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume it"),
        "{stderr}"
    );
    assert_eq!(
        names(resumed.path()),
        [saved_name.clone(), staging_name.clone()]
    );
    assert!(!files_under(&resumed.path().join(&staging_name)).is_empty());
    let out = download(resumed.path(), &server);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let at: u64 = stderr
        .split(&format!("resuming the download of build {id} at byte "))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume in {stderr}"));
    assert!(
        at > 0 && at < whole.len() as u64 / 2,
        "resumed at byte {at} of {}",
        whole.len()
    );
    assert_eq!(files_under(resumed.path()), expected);
    assert_eq!(names(resumed.path()), ["primary"]);

    // A stopped download whose saved state went wrong is refused whole, removed, and the next
    // run succeeds.
    let corrupt = tempfile::tempdir().expect("dir");
    let out = download(corrupt.path(), &cut_after(addr, whole.len() / 2));
    assert!(!out.status.success());
    let saved = corrupt.path().join(&saved_name);
    let text = std::fs::read_to_string(&saved).expect("saved");
    let mut fields: Vec<String> = text.split_whitespace().map(String::from).collect();
    // The running sum's state is the sixth field.
    assert_eq!(fields.len(), 7, "{text}");
    let flipped = if fields[5].starts_with('0') { "1" } else { "0" };
    fields[5].replace_range(..1, flipped);
    std::fs::write(&saved, fields.join(" ")).expect("damage");
    let out = download(corrupt.path(), &server);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("do not match their digest"), "{stderr}");
    assert!(
        names(corrupt.path()).is_empty(),
        "the bad download was removed and nothing extracted"
    );
    assert!(download(corrupt.path(), &server).status.success());
    assert_eq!(files_under(corrupt.path()), expected);
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file below `dir`, by its path there, with its bytes.
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(at) = todo.pop() {
        for entry in std::fs::read_dir(&at).expect("read") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let name = path.strip_prefix(dir).expect("below").display().to_string();
                files.insert(name, std::fs::read(&path).expect("file"));
            }
        }
    }
    files
}

/// A server address for one connection to `addr` that is cut after `limit` bytes came back:
/// a dropped connection at a known point.
fn cut_after(addr: SocketAddr, limit: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let (mut client, _) = listener.accept().expect("accept");
        let mut server = TcpStream::connect(addr).expect("connect");
        let (mut to_server, mut from_client) = (
            server.try_clone().expect("clone"),
            client.try_clone().expect("clone"),
        );
        std::thread::spawn(move || io::copy(&mut from_client, &mut to_server));
        let mut left = limit;
        let mut buf = [0u8; 16 << 10];
        while left > 0 {
            let Ok(n) = server.read(&mut buf[..left.min(16 << 10)]) else {
                break;
            };
            if n == 0 || client.write_all(&buf[..n]).is_err() {
                break;
            }
            left -= n;
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    });
    format!("http://{proxy}")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_store_hands_out_presigned_artifact_urls() {
    require_docker();
    let s3 = S3Server::start();
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\npresigned_artifacts = true\n",
            s3.endpoint(),
            s3::BUCKET,
            s3::ACCESS_KEY,
            s3::SECRET_KEY
        ),
    )
    .expect("config");
    let (_c, addr) = start_coordinator(data.path(), &["--config", config.to_str().expect("utf-8")]);
    let _w = start_worker("w-url", addr, &[]);
    let server = format!("http://{addr}");
    let src = checkout(&[(
        "buildspec.yml",
        "version: 0.2\nphases:\n  build:\n    commands:\n      - head -c 2000000 /dev/urandom > out.bin\nartifacts:\n  files:\n    - out.bin\n",
    )]);
    let id = kiln_tests::start(addr, src.path(), &[]);
    let build = wait_complete(&mut client(addr, None).await, &id, Duration::from_secs(120)).await;
    assert_eq!(build.build_status, "SUCCEEDED");
    let out = kiln(
        &[
            "artifacts",
            &id,
            "--url",
            "--expires",
            "10m",
            "--server",
            &server,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    // Fetched with plain curl: the whole tar, as the build's digest says.
    let fetched = data.path().join("fetched.tar");
    let curl = |url: &str| {
        std::process::Command::new("curl")
            .args(["-sf", "-o", fetched.to_str().expect("utf-8"), url])
            .status()
            .expect("curl")
    };
    assert!(curl(&url).success(), "GET {url}");
    let tar = std::fs::read(&fetched).expect("fetched");
    assert_eq!(tar.len() as u64, build.artifacts_size);
    let digest = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(&tar));
    assert_eq!(digest, build.artifacts_digest);
    // A tampered signature is refused by the store.
    let (head, signature) = url.rsplit_once("X-Amz-Signature=").expect("a signature");
    let reversed: String = signature.chars().rev().collect();
    let tampered = format!("{head}X-Amz-Signature={reversed}");
    assert!(!curl(&tampered).success(), "a tampered URL was served");
    // Seven days is S3's limit.
    let out = kiln(
        &[
            "artifacts",
            &id,
            "--url",
            "--expires",
            "200h",
            "--server",
            &server,
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at most 7 days"), "{stderr}");
}
