//! Semantics §5: artifact rules on real builds, including paths and links that must never be read.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::run_with;
use kiln_buildspec::routing::PhaseType::*;
use kiln_buildspec::routing::Status::*;
use kiln_worker::artifacts::{collect, ArtifactTarget, Collected, Packaging, Tree};

/// Every file under `dir` (relative path to content; links as `-> target`).
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(dir)
                .expect("prefix")
                .display()
                .to_string();
            let meta = path.symlink_metadata().expect("meta");
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("link");
                out.insert(rel, format!("-> {}", target.display()));
            } else if meta.is_dir() {
                stack.push(path);
            } else {
                out.insert(rel, std::fs::read_to_string(&path).expect("read"));
            }
        }
    }
    out
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const MAKE_TREE: &str = r#"version: 0.2
phases:
  build:
    commands:
      - mkdir -p dist/js dist/css empty/dir && echo app > dist/js/app.js && echo css > dist/css/site.css && echo top > dist/index.html && echo map > dist/js/app.js.map
      - cd dist/js
"#;

async fn build_with_artifacts(
    artifacts: &str,
    packaging: Packaging,
) -> (common::Ran, tempfile::TempDir) {
    run_collecting(&format!("{MAKE_TREE}{artifacts}"), packaging).await
}

/// Runs `buildspec` (with a README.md in the checkout), writing artifacts as a worker does: one
/// tar (every test here checks what it holds, extracted into a new directory, which is returned).
async fn run_collecting(buildspec: &str, packaging: Packaging) -> (common::Ran, tempfile::TempDir) {
    let out = tempfile::tempdir().expect("out");
    let tar = tempfile::NamedTempFile::new()
        .expect("tar")
        .into_temp_path();
    let tar_path = tar.to_path_buf();
    let ran = run_with(buildspec, &[("README.md", "readme\n")], |job| {
        job.artifacts = ArtifactTarget {
            tar: Some(tar_path),
            packaging,
        };
    })
    .await;
    if ran.record.artifacts.is_some() {
        let file = std::fs::File::open(&tar).expect("the artifacts tar");
        tar::Archive::new(file).unpack(out.path()).expect("unpack");
    }
    (ran, out)
}

#[tokio::test]
async fn paths_resolve_from_the_source_dir_not_the_last_cwd() {
    let (ran, out) = build_with_artifacts(
        "artifacts:\n  files:\n    - dist/**/*\n    - README.md\n",
        Packaging::None,
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    assert_eq!(
        tree(&out.path().join("primary")),
        map(&[
            ("README.md", "readme\n"),
            ("dist/css/site.css", "css\n"),
            ("dist/index.html", "top\n"),
            ("dist/js/app.js", "app\n"),
            ("dist/js/app.js.map", "map\n"),
        ])
    );
    let artifact = ran.record.artifacts.as_ref().expect("artifact");
    assert_eq!(artifact.files.len(), 5);
    assert_eq!(artifact.size_in_bytes, 7 + 4 + 4 + 4 + 4);
    let readme = artifact
        .files
        .iter()
        .find(|f| f.path == "README.md")
        .expect("readme");
    // sha256("readme\n")
    assert_eq!(readme.sha256sum, sha256_hex(b"readme\n"));
    assert_eq!(artifact.sha256sum.len(), 64);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn base_directory_discard_paths_and_exclusions() {
    let (ran, out) = build_with_artifacts(
        "artifacts:\n  base-directory: dist\n  discard-paths: yes\n  exclude-paths:\n    - '**/*.map'\n  files:\n    - '**/*'\n",
        Packaging::None,
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    assert_eq!(
        tree(&out.path().join("primary")),
        map(&[
            ("app.js", "app\n"),
            ("index.html", "top\n"),
            ("site.css", "css\n")
        ])
    );
}

#[tokio::test]
async fn secondary_artifacts_and_zip_packaging() {
    let (ran, out) = build_with_artifacts(
        "artifacts:\n  files:\n    - README.md\n    - dist/index.html\n  secondary-artifacts:\n    web:\n      base-directory: dist\n      files:\n        - index.html\n        - css/*\n    scripts:\n      name: js-$CODEBUILD_BUILD_NUMBER\n      s3-prefix: builds/js\n      files:\n        - dist/js/*.js\n",
        Packaging::Zip,
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    let names = |zip_path: &Path| {
        let file = std::fs::File::open(zip_path).expect("zip exists");
        let mut zip = zip::ZipArchive::new(file).expect("valid zip");
        let mut names: Vec<String> = (0..zip.len())
            .map(|i| zip.by_index(i).expect("entry").name().to_string())
            .collect();
        names.sort();
        names
    };
    // dist/index.html is in two artifacts: one read of the archive serves both.
    assert_eq!(
        names(&out.path().join("primary.zip")),
        vec!["README.md", "dist/index.html"]
    );
    assert_eq!(
        names(&out.path().join("secondary/web.zip")),
        vec!["css/site.css", "index.html"]
    );
    assert_eq!(
        names(&out.path().join("secondary/scripts.zip")),
        vec!["dist/js/app.js"]
    );
    let secondary = &ran.record.secondary_artifacts;
    assert_eq!(secondary.len(), 2);
    assert_eq!(secondary[1].artifact_identifier.as_deref(), Some("scripts"));
    assert_eq!(secondary[1].name, "js-1");
    // Recorded as written; the others have none.
    assert_eq!(secondary[1].s3_prefix.as_deref(), Some("builds/js"));
    assert_eq!(secondary[0].s3_prefix, None);
    assert_eq!(
        ran.record.artifacts.as_ref().expect("primary").s3_prefix,
        None
    );
    assert_eq!(secondary[1].packaging, "ZIP");
    let zip_bytes = std::fs::read(out.path().join("secondary/scripts.zip")).expect("zip");
    assert_eq!(secondary[1].sha256sum, sha256_hex(&zip_bytes));
}

#[tokio::test]
async fn escaping_patterns_and_links_out_are_never_read() {
    let (ran, out) = run_collecting(
        r#"version: 0.2
phases:
  build:
    commands:
      - echo host-secret > /tmp/outside.txt
      - ln -s /tmp/outside.txt link-abs
      - ln -s ../../../../../tmp/outside.txt link-rel
      - ln -s inside.txt link-in
      - echo inside > inside.txt
artifacts:
  files:
    - ../../../../tmp/outside.txt
    - /tmp/outside.txt
    - link-abs
    - link-rel
    - link-in
    - inside.txt
"#,
        Packaging::None,
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    let files = tree(&out.path().join("primary"));
    assert_eq!(
        files,
        map(&[("inside.txt", "inside\n"), ("link-in", "inside\n")])
    );
    assert!(
        !ran.log.contains("\nhost-secret\n"),
        "never read, never logged"
    );
    ran.assert_log("Skipping artifact path");
    let skipped = ran.log.matches("Skipping artifact path").count();
    assert!(skipped >= 4, "each escaping path is logged:\n{}", ran.log);
}

#[tokio::test]
async fn enable_symlinks_keeps_links_inside_the_tree() {
    let (ran, out) = run_collecting(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo v > real.txt && ln -s real.txt alias.txt\nartifacts:\n  enable-symlinks: yes\n  files:\n    - '*.txt'\n",
        Packaging::None,
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    assert_eq!(
        tree(&out.path().join("primary")),
        map(&[("alias.txt", "-> real.txt"), ("real.txt", "v\n")])
    );
}

#[tokio::test]
async fn no_match_fails_upload_with_client_error() {
    let (ran, out) = build_with_artifacts(
        "artifacts:\n  files:\n    - missing/**/*\n",
        Packaging::None,
    )
    .await;
    assert_eq!(ran.status(), Failed);
    assert_eq!(
        ran.context(UploadArtifacts).1,
        "no matching artifact paths found"
    );
    assert!(tree(out.path()).is_empty());
}

#[tokio::test]
async fn a_directory_pattern_includes_its_files_and_empty_dirs_are_dropped() {
    let (ran, out) = build_with_artifacts(
        "artifacts:\n  files:\n    - dist/css\n    - empty\n",
        Packaging::None,
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    assert_eq!(
        tree(&out.path().join("primary")),
        map(&[("dist/css/site.css", "css\n")])
    );
    assert!(!out.path().join("primary/empty").exists());
}

#[tokio::test]
async fn no_match_names_the_paths_that_were_refused() {
    let (ran, _out) = build_with_artifacts(
        "artifacts:\n  files:\n    - ../outside/*\n",
        Packaging::None,
    )
    .await;
    assert_eq!(ran.status(), Failed);
    let (code, message) = ran.context(UploadArtifacts);
    assert_eq!(code, "CLIENT_ERROR");
    assert!(
        message.starts_with("no matching artifact paths found (skipped ../outside/*: "),
        "{message}"
    );
    assert!(
        message.contains("escapes the source directory"),
        "{message}"
    );
}

#[tokio::test]
async fn hard_linked_files_are_collected() {
    let (ran, out) = run_collecting(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir out && echo data > out/a.txt && ln out/a.txt out/b.txt\nartifacts:\n  files:\n    - out/*\n",
        Packaging::None,
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    assert_eq!(
        tree(&out.path().join("primary")),
        map(&[("out/a.txt", "data\n"), ("out/b.txt", "data\n")])
    );
}

/// A tree with what the rules must handle: nested files, modes, a second name of a file, links
/// inside and out, a fifo, a name that is not UTF-8, an empty directory, and a secret beside it;
/// and a directory of many files and a file of several read-ahead heads (see `in_place`).
const ODD_TREE: &str = r#"set -e
mkdir -p /t/src/a/b /t/src/empty /t/outside && cd /t/src
echo one > a/one && echo two > a/b/two && chmod 0750 a/b/two && ln a/one a/hard
ln -s one a/in && ln -s /etc/hostname a/out && ln -s ../../outside a/up && mkfifo a/fifo
printf x > "$(printf 'a/bad\377name')" && echo secret > /t/outside/secret
ln -s /t/src /t/link
mkdir many && for i in $(seq 100 199); do echo $i > many/$i; done && yes abc | head -c 600000 > big"#;

/// Collects `spec`'s artifacts from `source` into a tar, unpacked; returns the record and files.
async fn collect_into(
    source: Tree,
    spec: &kiln_buildspec::Artifacts,
) -> (Collected, BTreeMap<String, String>) {
    let out = tempfile::tempdir().expect("out");
    let tar = out.path().join("artifacts.tar");
    let target = ArtifactTarget {
        tar: Some(tar.clone()),
        packaging: Packaging::None,
    };
    let collected = collect(source, spec, &["odd".to_string()], &target)
        .await
        .expect("collected");
    let file = std::fs::File::open(&tar).expect("the artifacts tar");
    let unpacked = out.path().join("unpacked");
    tar::Archive::new(file).unpack(&unpacked).expect("unpack");
    (collected, tree(&unpacked.join("primary")))
}

#[tokio::test]
async fn reading_the_tree_in_place_collects_what_the_archive_does() {
    let engine = common::engine().await;
    let container = kiln_tests::Container::sleeping("in-place");
    let c = container.0.as_str();
    kiln_tests::docker(&["exec", c, "sh", "-c", ODD_TREE]);
    let buildspec = "version: 0.2\nphases:\n  build:\n    commands:\n      - 'true'\nartifacts:\n  files:\n    - '**/*'\n  secondary-artifacts:\n    links:\n      enable-symlinks: yes\n      files:\n        - 'a/**/*'\n";
    let spec = kiln_buildspec::parse("buildspec.yml", buildspec)
        .expect("buildspec")
        .buildspec
        .artifacts
        .expect("artifacts");
    let in_place = Tree::in_place(&engine, c, "/t/src")
        .await
        .expect("the tests run as root on the Docker host, where the tree can be read in place");
    let (from_place, files) = collect_into(in_place, &spec).await;
    let (from_archive, archive_files) =
        collect_into(Tree::archive(&engine, c, "/t/src"), &spec).await;
    assert_eq!(files, archive_files);
    assert_eq!(files.len(), 4 + 100 + 1);
    assert_eq!(files.get("many/150").map(String::as_str), Some("150\n"));
    assert_eq!(files.get("big").map(String::len), Some(600_000));
    let below_a: BTreeMap<String, String> = files
        .iter()
        .filter(|(path, _)| path.starts_with("a/"))
        .map(|(path, text)| (path.clone(), text.clone()))
        .collect();
    assert_eq!(
        below_a,
        map(&[
            ("a/b/two", "two\n"),
            ("a/hard", "one\n"),
            ("a/in", "one\n"),
            ("a/one", "one\n"),
        ])
    );
    assert_eq!(from_place.primary.files, from_archive.primary.files);
    assert_eq!(
        from_place.secondary[0].files,
        from_archive.secondary[0].files
    );
    assert_eq!(from_place.skipped, from_archive.skipped);
    let skipped: Vec<&str> = from_place.skipped.iter().map(|s| s.path.as_str()).collect();
    assert!(
        skipped.contains(&"a/out") && skipped.contains(&"a/up"),
        "{skipped:?}"
    );
    let two = from_place
        .primary
        .files
        .iter()
        .find(|f| f.path == "a/b/two");
    assert_eq!(two.map(|f| f.sha256sum.clone()), Some(sha256_hex(b"two\n")));
    // A source directory that is itself a link is not read in place (the archive is then used).
    let refused = Tree::in_place(&engine, c, "/t/link").await;
    assert!(
        refused.is_err(),
        "a linked source directory was opened in place"
    );
    // Nor is a container that no longer runs; Tree::of falls back to the archive.
    kiln_tests::docker(&["stop", "-t", "0", c]);
    assert!(Tree::in_place(&engine, c, "/t/src").await.is_err());
    let (stopped, stopped_files) = collect_into(Tree::of(&engine, c, "/t/src").await, &spec).await;
    assert_eq!(stopped_files, files);
    assert_eq!(stopped.primary.files, from_archive.primary.files);
}
