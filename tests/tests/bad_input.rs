//! Bad input at the coordinator's API: unknown ids, invalid buildspecs, oversize messages, wrong
//! or missing tokens, hostile source archives. Each gets the right gRPC status and a message that
//! names the problem; nothing is stored.

use kiln_proto::v1::worker_service_client::WorkerServiceClient;
use kiln_proto::v1::{
    start_build_request, upload_source_request, worker_message, DownloadArtifactRequest,
    GetBuildRequest, Hello, Project, StartBuildRequest, StopBuildRequest, StreamLogsRequest,
    UploadBegin, UploadSourceRequest, WorkerMessage,
};
use kiln_tests::{channel, client, Client, Proc};
use tonic::Code;

const CLIENT_TOKEN: &str = "client-s3cret";
const JOIN_TOKEN: &str = "join-s3cret";

fn coordinator(data: &std::path::Path) -> (Proc, std::net::SocketAddr) {
    let dir = data.to_str().expect("utf-8 path");
    let (proc, addr) = Proc::kiln(
        "coordinator",
        &[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir,
            "--token",
            CLIENT_TOKEN,
            "--join-token",
            JOIN_TOKEN,
            "--max-upload-bytes",
            "1000000",
        ],
        &[],
        true,
    );
    (proc, addr.expect("address"))
}

fn inline(name: &str) -> Option<start_build_request::ProjectRef> {
    Some(start_build_request::ProjectRef::InlineProject(Project {
        name: name.to_string(),
        ..Project::default()
    }))
}

async fn upload(client: &mut Client, archive: Vec<u8>) -> Result<String, tonic::Status> {
    let mut messages = vec![UploadSourceRequest {
        part: Some(upload_source_request::Part::Begin(UploadBegin {
            size: archive.len() as u64,
        })),
    }];
    for chunk in archive.chunks(64 * 1024) {
        messages.push(UploadSourceRequest {
            part: Some(upload_source_request::Part::Data(chunk.to_vec())),
        });
    }
    let response = client
        .upload_source(tokio_stream::iter(messages))
        .await?
        .into_inner();
    Ok(response.digest)
}

/// A tar with one entry, built by hand so it can hold what `tar::Builder` refuses to write.
fn tar_with(path: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    {
        let gnu = header.as_gnu_mut().expect("gnu header");
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, data).expect("append");
    builder.into_inner().expect("tar")
}

fn good_tar(buildspec: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(buildspec.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "buildspec.yml", buildspec.as_bytes())
        .expect("append");
    builder.into_inner().expect("tar")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_bad_input_with_clear_errors() {
    let data = tempfile::tempdir().expect("tempdir");
    let (_coordinator, addr) = coordinator(data.path());

    // Tokens: none, wrong, right. Health answers without one.
    let mut anonymous = client(addr, None).await;
    let e = anonymous
        .get_build(GetBuildRequest { id: "x:y".into() })
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("missing client token"), "{e}");
    let mut wrong = client(addr, Some("guess")).await;
    let e = wrong
        .get_build(GetBuildRequest { id: "x:y".into() })
        .await
        .expect_err("wrong token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let channel = channel(addr).await;
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kiln.v1.BuildService".into(),
        })
        .await
        .expect("health without a token")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    // Server reflection lists the services, also without a token.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "kiln.v1.BuildService",
        "kiln.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
    }
    // A worker with the client token (not the join token) is refused.
    let hello = WorkerMessage {
        kind: Some(worker_message::Kind::Hello(Hello {
            worker_id: "intruder".into(),
            slots: 1,
            ..Hello::default()
        })),
    };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![hello]));
    let bearer = format!("Bearer {CLIENT_TOKEN}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", bearer);
    let e = WorkerServiceClient::new(channel)
        .connect_worker(request)
        .await
        .expect_err("client token is not a join token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");

    let mut c = client(addr, Some(CLIENT_TOKEN)).await;

    // Unknown build ids.
    let unknown = "nope:00000000-0000-0000-0000-000000000000".to_string();
    let e = c
        .get_build(GetBuildRequest {
            id: unknown.clone(),
        })
        .await
        .expect_err("get");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains(&unknown), "{e}");
    let e = c
        .stop_build(StopBuildRequest {
            id: unknown.clone(),
        })
        .await
        .expect_err("stop");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = c
        .stream_logs(StreamLogsRequest {
            id: unknown.clone(),
            from_seq: 0,
            follow: true,
        })
        .await
        .expect_err("logs");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = c
        .download_artifact(DownloadArtifactRequest {
            id: unknown,
            offset: 0,
        })
        .await
        .expect_err("artifacts");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // An invalid buildspec is refused with its position; nothing is queued.
    let digest = upload(
        &mut c,
        good_tar("version: 0.2\nphases:\n  build:\n    commands:\n      - true\n"),
    )
    .await
    .expect("good upload");
    let e = c
        .start_build(StartBuildRequest {
            project_ref: inline("bad-input"),
            source: Some(start_build_request::Source::SourceDigest(digest.clone())),
            buildspec_override: "version: 0.2\nphases:\n  biuld:\n    commands: [true]\n".into(),
            ..StartBuildRequest::default()
        })
        .await
        .expect_err("invalid buildspec");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("buildspec.yml:3:3"), "{e}");
    // An unknown source digest, a bad project name.
    let e = c
        .start_build(StartBuildRequest {
            project_ref: inline("bad-input"),
            source: Some(start_build_request::Source::SourceDigest(format!(
                "sha256:{}",
                "0".repeat(64)
            ))),
            ..StartBuildRequest::default()
        })
        .await
        .expect_err("unknown digest");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = c
        .start_build(StartBuildRequest {
            project_ref: inline("../etc"),
            source: Some(start_build_request::Source::SourceDigest(digest)),
            ..StartBuildRequest::default()
        })
        .await
        .expect_err("bad project name");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // Oversize messages are refused by the transport limit.
    let e = c
        .start_build(StartBuildRequest {
            project_ref: inline("bad-input"),
            buildspec_override: "#".repeat(5 << 20),
            ..StartBuildRequest::default()
        })
        .await
        .expect_err("oversize");
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e}"
    );

    // Hostile archives: traversal, absolute paths, links out; and one over the upload limit.
    for (path, kind, link) in [
        ("../escape.txt", tar::EntryType::Regular, None),
        ("/etc/evil", tar::EntryType::Regular, None),
        ("link", tar::EntryType::Symlink, Some("/etc/passwd")),
        ("sub/link", tar::EntryType::Symlink, Some("../../outside")),
        ("hard", tar::EntryType::Link, Some("../outside")),
    ] {
        let e = upload(&mut c, tar_with(path, kind, link, b"x"))
            .await
            .expect_err(path);
        assert_eq!(e.code(), Code::InvalidArgument, "{path}: {e}");
        assert!(e.message().contains(path), "{path}: {e}");
    }
    let e = upload(&mut c, vec![0; 1_500_000])
        .await
        .expect_err("too big");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("max_upload_bytes"), "{e}");
    let e = upload(&mut c, b"not a tar at all, just text".repeat(100))
        .await
        .expect_err("not a tar");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
}
