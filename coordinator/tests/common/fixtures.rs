//! Builds as the coordinator would hand them to the store, and shorthands for the calls the
//! tests make most.

use kiln_coordinator::store::{Created, QueueChange, StateStore, Updated};
use kiln_proto::v1::{Assignment, Build, StoredBuild};

pub const NOW_MS: i64 = 1_700_000_000_000;

/// A build as the coordinator would hand it to `create_build`.
pub fn build(project: &str, priority: i32) -> StoredBuild {
    let id = format!("{project}:{}", uuid::Uuid::new_v4());
    StoredBuild {
        build: Some(Build {
            id: id.clone(),
            project_name: project.into(),
            build_status: "IN_PROGRESS".into(),
            current_phase: "QUEUED".into(),
            queued_time_ms: NOW_MS,
            priority,
            ..Default::default()
        }),
        spec: Some(Assignment {
            build_id: id,
            project_name: project.into(),
            buildspec: "version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\n"
                .repeat(3),
            ..Default::default()
        }),
        queued_deadline_ms: NOW_MS + 3_600_000,
        ..Default::default()
    }
}

pub fn id(build: &StoredBuild) -> String {
    build.build.as_ref().expect("build record").id.clone()
}

pub fn number(build: &StoredBuild) -> u64 {
    build.build.as_ref().expect("build record").build_number
}

pub async fn create(store: &impl StateStore, build: StoredBuild) -> StoredBuild {
    create_with(store, build, None).await
}

pub async fn create_with(
    store: &impl StateStore,
    build: StoredBuild,
    token: Option<&str>,
) -> StoredBuild {
    let token = token.map(str::to_owned);
    match store.create_build(build, token).await.expect("create") {
        Created::New(build) => build,
        other => panic!("expected a new build, got {other:?}"),
    }
}

pub async fn get(store: &impl StateStore, id: &str) -> StoredBuild {
    store.get_build(id).await.expect("get").expect("stored")
}

pub async fn update(
    store: &impl StateStore,
    build: StoredBuild,
    change: QueueChange,
) -> StoredBuild {
    match store.update_build(build, change).await.expect("update") {
        Updated::Done(build) => build,
        other => panic!("expected Done, got {other:?}"),
    }
}

pub const CLAIM: QueueChange = QueueChange::Claim { limit: 0 };
