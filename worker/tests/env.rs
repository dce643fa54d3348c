//! Semantics §4: variables, precedence, secrets and their masking, exported variables.

mod common;

use common::run_with;
use kiln_buildspec::routing::PhaseType::*;
use kiln_buildspec::routing::Status::*;

#[tokio::test]
async fn codebuild_variables_are_set() {
    let ran = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - env | grep -E '^(CODEBUILD_|HOME=|AWS_)' | sort\n",
        &[],
        |job| {
            job.build_number = 42;
            job.source_version = Some("abc123".into());
            job.resolved_source_version = Some("0123456789abcdef".into());
        },
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    let id = &ran.record.id;
    assert!(id.starts_with("test:"), "{id}");
    for expected in [
        format!("CODEBUILD_BUILD_ID={id}"),
        "CODEBUILD_BUILD_NUMBER=42".to_string(),
        format!("CODEBUILD_BUILD_ARN=arn:kiln:codebuild:us-east-1:000000000000:build/{id}"),
        format!("CODEBUILD_BUILD_IMAGE={}", common::IMAGE),
        "CODEBUILD_BUILD_SUCCEEDING=1".to_string(),
        "CODEBUILD_INITIATOR=kiln".to_string(),
        "CODEBUILD_SRC_DIR=/codebuild/output/src1/src".to_string(),
        "CODEBUILD_SOURCE_VERSION=abc123".to_string(),
        "CODEBUILD_RESOLVED_SOURCE_VERSION=0123456789abcdef".to_string(),
        "CODEBUILD_CI=true".to_string(),
        "CODEBUILD_PROJECT_ARN=arn:kiln:codebuild:us-east-1:000000000000:project/test".to_string(),
        "HOME=/root".to_string(),
        "AWS_REGION=us-east-1".to_string(),
        "AWS_DEFAULT_REGION=us-east-1".to_string(),
    ] {
        ran.assert_log(&format!("{expected}\n"));
    }
    ran.assert_log("CODEBUILD_START_TIME=");
    ran.assert_log("CODEBUILD_LOG_PATH=");
}

#[tokio::test]
async fn precedence_is_override_then_project_then_buildspec_and_values_are_literal() {
    let ran = run_with(
        "version: 0.2\nenv:\n  variables:\n    A: buildspec\n    B: buildspec\n    C: buildspec\n    P: $PATH:/x\nphases:\n  build:\n    commands:\n      - echo \"A=$A B=$B C=$C P=$P\"\n",
        &[],
        |job| {
            job.project_env = vec![("B".into(), "project".into()), ("C".into(), "project".into())];
            job.env_overrides = vec![("C".into(), "override".into())];
        },
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    ran.assert_log("A=buildspec B=project C=override P=$PATH:/x");
}

#[tokio::test]
async fn secrets_are_resolved_and_masked_everywhere_also_split_across_chunks() {
    let ran = run_with(
        r#"version: 0.2
env:
  parameter-store:
    TOKEN: /CodeBuild/token
  secrets-manager:
    DB_PASSWORD: prod/db:password
    WHOLE: "arn:aws:secretsmanager:us-east-1:123456789012:secret:whole-AbCdEf"
  exported-variables:
    - TOKEN
    - PLAIN
phases:
  build:
    commands:
      - echo "token is $TOKEN"
      - echo hunter2-in-command-text
      - |
        printf 'split: hun'; sleep 0.3; printf 'ter2-in'; sleep 0.3; printf -- '-command-text\n'
      - echo "db=$DB_PASSWORD whole=$WHOLE"
      - PLAIN=visible
"#,
        &[],
        |job| {
            for s in [
                "/CodeBuild/token=hunter2-in-command-text",
                r#"prod/db={"password":"pa55word"}"#,
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:whole-AbCdEf=wholesecret",
            ] {
                job.secrets.add_argument(s).expect("secret");
            }
        },
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    for secret in ["hunter2", "pa55word", "wholesecret"] {
        assert!(!ran.log.contains(secret), "{secret} leaked:\n{}", ran.log);
    }
    ran.assert_log("token is ***\n");
    ran.assert_log("Running command echo ***\n***\n");
    ran.assert_log("split: ***\n");
    ran.assert_log("db=*** whole=***\n");
    let exported = &ran.record.exported_environment_variables;
    assert_eq!(
        exported.len(),
        1,
        "secrets are never exported: {exported:?}"
    );
    assert_eq!(
        (exported[0].name.as_str(), exported[0].value.as_str()),
        ("PLAIN", "visible")
    );
    let json = serde_json::to_string(&ran.record).expect("json");
    assert!(!json.contains("hunter2") && !json.contains("pa55word"));
}

#[tokio::test]
async fn a_failed_phase_sets_build_succeeding_to_zero() {
    let ran = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - exit 1\n  post_build:\n    commands:\n      - echo succeeding=$CODEBUILD_BUILD_SUCCEEDING\n",
        &[],
        |_| {},
    )
    .await;
    assert_eq!(ran.status(), Failed);
    ran.assert_log("succeeding=0\n");
}

#[tokio::test]
async fn exported_variables_take_their_value_at_the_end_of_post_build() {
    let ran = run_with(
        "version: 0.2\nenv:\n  exported-variables:\n    - VERSION\n    - NEVER_SET\nphases:\n  build:\n    commands:\n      - VERSION=1\n  post_build:\n    commands:\n      - VERSION=2\nartifacts:\n  name: v$VERSION\n  files:\n    - buildspec.yml\n",
        &[],
        |_| {},
    )
    .await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    let exported: Vec<_> = ran
        .record
        .exported_environment_variables
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(exported, vec![("VERSION", "2"), ("NEVER_SET", "")]);
    assert_eq!(ran.record.artifacts.as_ref().expect("artifact").name, "v2");
    assert!(ran.phases().contains(&(PostBuild, Succeeded)));
}
