//! One suite for every backend: a local directory and a real S3-compatible server (`s3s-fs`, which
//! `deploy/test-deps.sh` installs; a missing one fails the S3 tests with the fix, never skips
//! them).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_cache::{Backend, BlobStore, Digest, EncryptionKey, S3Config, StoreConfig, StoreError};
use kiln_tests::s3::S3Server;

/// Plain and sealed blobs apart, so each round starts with an empty store.
fn open(backend: Backend, key: Option<EncryptionKey>) -> BlobStore {
    let prefix = if key.is_some() { "sealed" } else { "plain" };
    open_at(backend, key, prefix)
}

fn open_at(backend: Backend, key: Option<EncryptionKey>, prefix: &str) -> BlobStore {
    BlobStore::open(&StoreConfig {
        backend,
        prefix: prefix.into(),
        key,
        level: 3,
    })
    .expect("open the store")
}

fn file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}

/// Pseudo-random bytes that do not compress to nothing.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn suite(backend: Backend) {
    let key = EncryptionKey::from_hex(&"5a".repeat(32)).expect("key");
    for encrypted in [None, Some(key.clone())] {
        let store = open(backend.clone(), encrypted.clone());
        let dir = tempfile::tempdir().expect("dir");
        let small = file(dir.path(), "small", b"hello, cache\n");
        let empty = file(dir.path(), "empty", b"");
        // Several multipart parts and frames.
        let big = file(dir.path(), "big", &noise(20 << 20, 7));

        for path in [&small, &empty, &big] {
            let put = store.put_file(path, None).await.expect("put");
            assert!(put.uploaded, "{path:?} was new");
            assert_eq!(put.size, std::fs::metadata(path).expect("meta").len());
            let again = store
                .put_file(path, Some(&put.digest))
                .await
                .expect("put again");
            assert!(!again.uploaded, "unchanged content is not sent again");
            let back = dir.path().join("back");
            let n = store.get_file(&put.digest, &back).await.expect("get");
            assert_eq!(n, put.size);
            assert_eq!(
                std::fs::read(&back).expect("read"),
                std::fs::read(path).expect("read"),
                "{path:?} came back whole"
            );
        }

        // Content held in memory (a cache segment) is stored under its digest, the same blob as
        // the same content from a file.
        let segment = bytes::Bytes::from(noise(5 << 20, 11));
        let put = store.put_bytes(segment.clone()).await.expect("put_bytes");
        assert!(put.uploaded && put.size == segment.len() as u64);
        let again = store.put_bytes(segment.clone()).await.expect("again");
        assert!(!again.uploaded && again.digest == put.digest);
        let as_file = file(dir.path(), "segment", &segment);
        let from_file = store.put_file(&as_file, None).await.expect("put");
        assert!(!from_file.uploaded && from_file.digest == put.digest);
        let back = dir.path().join("segment-back");
        store.get_file(&put.digest, &back).await.expect("get");
        assert_eq!(std::fs::read(&back).expect("read"), segment);

        // Content stored as it is read, under the digest its sender claims: checked on the way,
        // and a false claim stores nothing, in one PUT or in several parts.
        let streamed = noise(12 << 20, 13);
        let digest = Digest::parse(&format!(
            "sha256:{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(&streamed)
        ))
        .expect("digest");
        let wrong = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).expect("digest");
        for content in [&streamed[..1000], &streamed[..]] {
            let e = store
                .put_checked(wrong.clone(), std::io::Cursor::new(content.to_vec()))
                .await
                .expect_err("a false claim");
            assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
            assert_eq!(
                store
                    .contains(std::slice::from_ref(&wrong))
                    .await
                    .expect("contains"),
                [false]
            );
        }
        let put = store
            .put_checked(digest.clone(), std::io::Cursor::new(streamed.clone()))
            .await
            .expect("put_checked");
        assert!(put.uploaded && put.size == streamed.len() as u64 && put.digest == digest);
        let back = dir.path().join("streamed-back");
        store.get_file(&digest, &back).await.expect("get");
        assert_eq!(std::fs::read(&back).expect("read"), streamed);
        let again = store
            .put_checked(digest.clone(), std::io::Cursor::new(streamed.clone()))
            .await
            .expect("again");
        assert!(!again.uploaded, "a blob the store has is checked, not sent");
        let mut forged = streamed.clone();
        forged[0] ^= 1;
        let e = store
            .put_checked(digest.clone(), std::io::Cursor::new(forged))
            .await
            .expect_err("a false claim to a blob the store has");
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");

        let known = store.put_file(&small, None).await.expect("put").digest;
        let unknown = Digest::parse(&format!("sha256:{}", "0".repeat(64))).expect("digest");
        assert_eq!(
            store
                .contains(&[known.clone(), unknown.clone(), known.clone()])
                .await
                .expect("contains"),
            [true, false, true]
        );
        let e = store
            .get_file(&unknown, &dir.path().join("x"))
            .await
            .expect_err("missing");
        assert!(matches!(e, StoreError::NotFound(_)), "{e}");
        assert!(!dir.path().join("x").exists());

        // Content that does not match the digest it is stored under is refused.
        let e = store
            .put_file(&big, Some(&known))
            .await
            .expect_err("wrong digest");
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        let (raw, location) = store.raw(&known);
        let other = open(backend.clone(), encrypted.clone());
        let swapped = other.put_file(&empty, None).await.expect("put").digest;
        let (_, empty_location) = other.raw(&swapped);
        let bytes = raw
            .get(&empty_location)
            .await
            .expect("raw get")
            .bytes()
            .await
            .expect("bytes");
        raw.put(&location, bytes.into()).await.expect("raw put");
        let target = dir.path().join("tampered");
        let e = store
            .get_file(&known, &target)
            .await
            .expect_err("swapped content");
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(!target.exists(), "nothing is written for a refused blob");
        raw.put(&location, bytes::Bytes::from_static(b"KLB\x01junk").into())
            .await
            .expect("raw put");
        let e = store.get_file(&known, &target).await.expect_err("garbage");
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");

        store.delete(&known).await.expect("delete");
        store.delete(&known).await.expect("delete twice");
        assert_eq!(store.contains(&[known]).await.expect("contains"), [false]);
        let m = store.metrics();
        assert!(m.bytes_in.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert!(m.hits.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }

    // An encrypted blob needs the key; a wrong key is named as such.
    let dir = tempfile::tempdir().expect("dir");
    let path = file(dir.path(), "secret", b"top secret");
    let sealed = open_at(backend.clone(), Some(key), "keys")
        .put_file(&path, None)
        .await
        .expect("put");
    let e = open_at(backend.clone(), None, "keys")
        .get_file(&sealed.digest, &dir.path().join("a"))
        .await
        .expect_err("no key");
    assert!(e.to_string().contains("no encryption key"), "{e}");
    let wrong = EncryptionKey::from_hex(&"11".repeat(32)).expect("key");
    let e = open_at(backend.clone(), Some(wrong), "keys")
        .get_file(&sealed.digest, &dir.path().join("b"))
        .await
        .expect_err("wrong key");
    assert!(e.to_string().contains("does not decrypt"), "{e}");
    // At rest the content is not readable.
    let (raw, location) = open_at(backend, None, "keys").raw(&sealed.digest);
    let at_rest = raw
        .get(&location)
        .await
        .expect("raw")
        .bytes()
        .await
        .expect("bytes");
    assert!(
        !at_rest.windows(10).any(|w| w == b"top secret"),
        "encrypted at rest"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_directory_backend_passes_the_suite() {
    let root = tempfile::tempdir().expect("root");
    suite(Backend::Local {
        root: root.path().to_path_buf(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_s3_backend_passes_the_suite() {
    let server = S3Server::start();
    suite(server.backend()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_is_down_says_where() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let store = open(
        Backend::S3(S3Config {
            endpoint: format!("http://127.0.0.1:{port}"),
            region: "us-east-1".into(),
            bucket: "kiln".into(),
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            path_style: true,
        }),
        None,
    );
    let dir = tempfile::tempdir().expect("dir");
    let path = file(dir.path(), "f", b"x");
    let e = tokio::time::timeout(Duration::from_secs(120), store.put_file(&path, None))
        .await
        .expect("gives up in time")
        .expect_err("down");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}
