//! Unit tests for parsing and validation: one or more per rule of semantics §1, each error
//! checked for its message and exact `line:col`.

use super::*;
use crate::model::{CacheAction, Command, CommandPhase, OnFailure, Shell, Span, Version};

/// Joins lines, so the tests show the YAML exactly as columns count it.
fn doc(lines: &[&str]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn ok(lines: &[&str]) -> Parsed {
    match parse("buildspec.yml", &doc(lines)) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid buildspec, got:\n{e}"),
    }
}

/// A diagnostic without the file name: `3:5: phases.biuld: unknown phase ...`.
fn short(d: &Diagnostic) -> String {
    let full = d.to_string();
    full.strip_prefix("buildspec.yml:")
        .unwrap_or(&full)
        .to_string()
}

fn errors(lines: &[&str]) -> Vec<String> {
    match parse("buildspec.yml", &doc(lines)) {
        Ok(p) => panic!("expected errors, parsed {:?}", p.buildspec),
        Err(e) => e.0.iter().map(short).collect(),
    }
}

/// Asserts the buildspec fails with exactly this one error.
fn error(lines: &[&str], expected: &str) {
    assert_eq!(errors(lines), vec![expected.to_string()]);
}

fn warnings(lines: &[&str]) -> Vec<String> {
    ok(lines).warnings.iter().map(short).collect()
}

/// A valid 0.2 buildspec whose `build` phase is `body` (indented by the caller).
fn with_build(body: &[&str]) -> Vec<String> {
    let mut lines = vec!["version: 0.2", "phases:", "  build:"];
    lines.extend_from_slice(body);
    lines.iter().map(|s| s.to_string()).collect()
}

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn on_failure(value: &str) -> Result<Option<OnFailure>, Vec<String>> {
    let text = doc(&[
        "version: 0.2",
        "phases:",
        "  build:",
        &format!("    on-failure: {value}"),
        "    commands: [make]",
    ]);
    match parse("buildspec.yml", &text) {
        Ok(p) => Ok(p
            .buildspec
            .phase(CommandPhase::Build)
            .and_then(|ph| ph.on_failure.clone())),
        Err(e) => Err(e.0.iter().map(short).collect()),
    }
}

// ---- version and top level ----

#[test]
fn minimal_buildspec() {
    let p = ok(&[
        "version: 0.2",
        "phases:",
        "  build:",
        "    commands:",
        "      - make",
    ]);
    let b = &p.buildspec;
    assert_eq!(b.version, Version::V02);
    assert!(p.warnings.is_empty());
    assert_eq!(
        b.phase(CommandPhase::Build).map(|ph| ph.commands.clone()),
        Some(vec![Command {
            text: "make".into(),
            span: Span { line: 5, col: 9 },
        }])
    );
}

#[test]
fn versions_accepted_as_number_or_string() {
    for (v, want) in [
        ("0.2", Version::V02),
        ("\"0.2\"", Version::V02),
        ("'0.1'", Version::V01),
        ("0.1", Version::V01),
    ] {
        let p = ok(&[&format!("version: {v}"), "phases:", "  build:"]);
        assert_eq!(p.buildspec.version, want, "{v}");
    }
}

#[test]
fn version_compared_as_source_text() {
    error(
        &["version: 0.20", "phases: {}"],
        "1:10: version: unsupported version \"0.20\", expected 0.2 or 0.1",
    );
    error(
        &["version: 0.3", "phases: {}"],
        "1:10: version: unsupported version \"0.3\", expected 0.2 or 0.1",
    );
    error(
        &["version: [0.2]", "phases: {}"],
        "1:10: version: unsupported version a list, expected 0.2 or 0.1",
    );
}

#[test]
fn version_required() {
    error(
        &["phases:", "  build:"],
        "1:1: version: required key is missing (use 0.2)",
    );
}

#[test]
fn unknown_top_level_key_is_an_error_with_hint() {
    error(
        &["version: 0.2", "phase:", "  build:"],
        "2:1: phase: unknown key, did you mean \"phases\"?",
    );
    let errs = errors(&["version: 0.2", "phases: {}", "zzzz: 1"]);
    assert_eq!(
        errs,
        vec!["3:1: zzzz: unknown key (expected one of: version, run-as, env, proxy, batch, phases, reports, artifacts, cache)"]
    );
}

#[test]
fn phases_required_unless_batch() {
    error(
        &["version: 0.2", "env:", "  shell: bash"],
        "1:1: phases: required key is missing (only a batch buildspec may omit it)",
    );
    let p = ok(&[
        "version: 0.2",
        "batch:",
        "  build-list:",
        "    - identifier: a",
    ]);
    assert!(p.buildspec.phases.is_empty());
}

#[test]
fn top_level_must_be_a_mapping() {
    error(
        &["- version: 0.2"],
        "1:1: a buildspec must be a mapping with `version` and `phases`, found a list",
    );
}

#[test]
fn empty_file_and_comment_only_file() {
    for text in ["", "# nothing here\n", "---\n"] {
        let e = parse("buildspec.yml", text).expect_err("empty");
        assert_eq!(
            e.0.iter().map(short).collect::<Vec<_>>(),
            vec!["1:1: empty buildspec: expected a mapping with `version` and `phases`"]
        );
    }
}

#[test]
fn trailing_empty_document_allowed_second_document_not() {
    let p = ok(&["version: 0.2", "phases:", "  build:", "---"]);
    assert_eq!(p.buildspec.phases.len(), 1);
    ok(&["---", "version: 0.2", "phases:", "  build:", "..."]);
    error(
        &["version: 0.2", "phases:", "  build:", "---", "version: 0.1"],
        "4:1: a buildspec is a single YAML document; found a second non-empty one",
    );
}

#[test]
fn run_as_must_be_a_non_empty_string() {
    let p = ok(&["version: 0.2", "run-as: codebuild-user", "phases: {}"]);
    assert_eq!(p.buildspec.run_as.as_deref(), Some("codebuild-user"));
    error(
        &["version: 0.2", "run-as:", "phases: {}"],
        "2:1: run-as: must be a non-empty user name",
    );
    error(
        &["version: 0.2", "run-as: ''", "phases: {}"],
        "2:9: run-as: must be a non-empty user name",
    );
    error(
        &["version: 0.2", "phases:", "  build:", "    run-as: [a]"],
        "4:13: phases.build.run-as: must be a string, found a list",
    );
}

// ---- YAML level ----

#[test]
fn yaml_syntax_error_is_one_diagnostic_at_scanner_position() {
    let errs = errors(&[
        "version: 0.2",
        "phases:",
        "  build:",
        "    commands:",
        "\t- make",
        "zzz: 1",
    ]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("5:2: invalid YAML: tabs"), "{errs:?}");
    let errs = errors(&["version: 0.2", "phases: [a"]);
    assert_eq!(
        errs,
        vec!["3:1: invalid YAML: while parsing a flow sequence, expected ',' or ']'"]
    );
}

#[test]
fn duplicate_keys_are_errors() {
    error(
        &[
            "version: 0.2",
            "phases:",
            "  build:",
            "    commands: [a]",
            "  build:",
            "    commands: [b]",
        ],
        "5:3: phases.build: duplicate key (first defined at 3:3)",
    );
    error(
        &["version: 0.2", "version: 0.2", "phases: {}"],
        "2:1: version: duplicate key (first defined at 1:1)",
    );
}

#[test]
fn non_scalar_keys_are_errors() {
    error(
        &["version: 0.2", "phases: {}", "[a, b]: c"],
        "3:1: mapping keys must be strings, found a list",
    );
}

#[test]
fn anchors_aliases_and_merge_keys() {
    let p = ok(&[
        "version: 0.2",
        "env:",
        "  variables: &vars",
        "    A: one",
        "    B: two",
        "  parameter-store:",
        "    <<: *vars",
        "    B: override",
        "    C: three",
        "phases:",
        "  pre_build:",
        "    commands: &cmds",
        "      - echo hi",
        "  build:",
        "    commands: *cmds",
    ]);
    let b = p.buildspec;
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(b.env.variables, pairs(&[("A", "one"), ("B", "two")]));
    // Explicit keys win over merged ones; merged entries take the place of `<<`.
    assert_eq!(
        b.env.parameter_store,
        pairs(&[("A", "one"), ("B", "override"), ("C", "three")])
    );
    let texts = |ph| -> Vec<String> {
        b.phase(ph)
            .map(|p| p.commands.iter().map(|c| c.text.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(texts(CommandPhase::Build), vec!["echo hi"]);
    assert_eq!(texts(CommandPhase::PreBuild), vec!["echo hi"]);
}

#[test]
fn merge_key_list_first_source_wins() {
    let p = ok(&[
        "version: 0.2",
        "env:",
        "  parameter-store: &a",
        "    X: from-a",
        "  secrets-manager: &b",
        "    X: from-b",
        "    Y: from-b",
        "  variables:",
        "    <<: [*a, *b]",
        "phases: {}",
    ]);
    assert_eq!(
        p.buildspec.env.variables,
        vec![
            ("X".to_string(), "from-a".to_string()),
            ("Y".to_string(), "from-b".to_string())
        ]
    );
}

#[test]
fn bad_merge_and_recursive_alias() {
    error(
        &["version: 0.2", "phases:", "  build:", "    <<: oops"],
        "4:9: phases.build.<<: merge key `<<` needs an alias to a mapping (`<<: *name`) or a list of them",
    );
    error(
        &["version: 0.2", "phases: &p", "  build: *p"],
        "3:10: invalid YAML: recursive alias",
    );
    error(
        &["version: 0.2", "phases: *nope"],
        "2:9: invalid YAML: while parsing node, found unknown anchor",
    );
}

#[test]
fn alias_bombs_are_refused() {
    let mut lines = vec![
        "version: 0.2".to_string(),
        "a0: &a0 [x, x, x, x, x, x, x, x, x, x]".to_string(),
    ];
    for i in 1..8 {
        let prev = format!("*a{}", i - 1);
        lines.push(format!("a{i}: &a{i} [{}]", vec![prev; 10].join(", ")));
    }
    let errs = errors(&as_refs(&lines));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("buildspec too large"), "{errs:?}");
}

#[test]
fn byte_order_mark_is_ignored() {
    let p = parse("buildspec.yml", "\u{feff}version: 0.2\nphases: {}\n").expect("bom");
    assert_eq!(p.buildspec.version, Version::V02);
}

// ---- env ----

#[test]
fn env_shell() {
    for (v, want) in [
        ("bash", Shell::Bash),
        ("/bin/sh", Shell::Sh),
        ("sh", Shell::Sh),
    ] {
        let p = ok(&[
            "version: 0.2",
            "env:",
            &format!("  shell: {v}"),
            "phases: {}",
        ]);
        assert_eq!(p.buildspec.env.shell, Some(want));
    }
    error(
        &[
            "version: 0.2",
            "env:",
            "  shell: powershell.exe",
            "phases: {}",
        ],
        "3:10: env.shell: unsupported shell \"powershell.exe\", expected one of: bash, /bin/sh, sh",
    );
}

#[test]
fn env_variables_keep_source_text() {
    let p = ok(&[
        "version: 0.2",
        "env:",
        "  variables:",
        "    PORT: 8080",
        "    DEBUG: yes",
        "    RATIO: 1.50",
        "    PATH: $PATH:/opt/bin",
        "    EMPTY:",
        "phases: {}",
    ]);
    let got: Vec<(&str, &str)> = p
        .buildspec
        .env
        .variables
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("PORT", "8080"),
            ("DEBUG", "yes"),
            ("RATIO", "1.50"),
            ("PATH", "$PATH:/opt/bin"),
            ("EMPTY", "")
        ]
    );
}

#[test]
fn env_variable_names_checked() {
    let errs = errors(&[
        "version: 0.2",
        "env:",
        "  variables:",
        "    CODEBUILD_BUILD_ID: x",
        "    1ST: x",
        "    MY-VAR: x",
        "    OK_1: [a]",
        "phases: {}",
    ]);
    assert_eq!(
        errs,
        vec![
            "4:5: env.variables.CODEBUILD_BUILD_ID: variable names starting with CODEBUILD_ are reserved",
            "5:5: env.variables.1ST: \"1ST\" is not a valid variable name (letters, digits and _, not starting with a digit)",
            "6:5: env.variables.MY-VAR: \"MY-VAR\" is not a valid variable name (letters, digits and _, not starting with a digit)",
            "7:11: env.variables.OK_1: must be a string, found a list",
        ]
    );
}

#[test]
fn parameter_store_and_secrets_manager() {
    let p = ok(&[
        "version: 0.2",
        "env:",
        "  parameter-store:",
        "    DB_HOST: /CodeBuild/db/host",
        "  secrets-manager:",
        "    TOKEN: arn:aws:secretsmanager:eu-west-1:123456789012:secret:ci/token-AbC:token",
        "    FULL: \"arn:aws:secretsmanager:eu-west-1:123456789012:secret:ci/key-X:password:AWSCURRENT:\"",
        "phases: {}",
    ]);
    let env = p.buildspec.env;
    assert_eq!(env.parameter_store[0].1, "/CodeBuild/db/host");
    assert_eq!(
        env.secrets_manager[0].1,
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ci/token-AbC:token"
    );
    assert_eq!(
        env.secrets_manager[1].1,
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ci/key-X:password:AWSCURRENT:"
    );
    error(
        &[
            "version: 0.2",
            "env:",
            "  secrets-manager:",
            "    TOKEN:",
            "phases: {}",
        ],
        "4:5: env.secrets-manager.TOKEN: needs a value (the name to look up)",
    );
}

#[test]
fn exported_variables_and_git_credential_helper() {
    let p = ok(&[
        "version: 0.2",
        "env:",
        "  exported-variables: [IMAGE_TAG, COMMIT, CODEBUILD_BUILD_NUMBER]",
        "  git-credential-helper: Yes",
        "phases: {}",
    ]);
    assert_eq!(
        p.buildspec.env.exported_variables,
        vec!["IMAGE_TAG", "COMMIT", "CODEBUILD_BUILD_NUMBER"]
    );
    assert!(p.buildspec.env.git_credential_helper);
    error(
        &[
            "version: 0.2",
            "env:",
            "  exported-variables: IMAGE_TAG",
            "phases: {}",
        ],
        "3:23: env.exported-variables: must be a list, found a string",
    );
    error(
        &["version: 0.2", "env:", "  exported-variables: [a-b]", "phases: {}"],
        "3:24: env.exported-variables[0]: \"a-b\" is not a valid variable name (letters, digits and _, not starting with a digit)",
    );
    error(
        &[
            "version: 0.2",
            "env:",
            "  git-credential-helper: maybe",
            "phases: {}",
        ],
        "3:26: env.git-credential-helper: must be yes, no, true or false, found \"maybe\"",
    );
}

#[test]
fn booleans_accept_yes_no_true_false_quoted_or_not() {
    for (v, want) in [
        ("yes", true),
        ("'yes'", true),
        ("TRUE", true),
        ("\"true\"", true),
        ("No", false),
        ("false", false),
        ("'no'", false),
    ] {
        let p = ok(&[
            "version: 0.2",
            "env:",
            &format!("  git-credential-helper: {v}"),
            "phases: {}",
        ]);
        assert_eq!(p.buildspec.env.git_credential_helper, want, "{v}");
    }
}

#[test]
fn environment_variables_only_in_version_0_1() {
    let p = ok(&[
        "version: 0.1",
        "environment_variables:",
        "  plaintext:",
        "    JAVA_HOME: /usr/lib/jvm/java-8-openjdk-amd64",
        "phases:",
        "  build:",
        "    commands: [mvn package]",
    ]);
    assert_eq!(p.buildspec.version, Version::V01);
    assert_eq!(
        p.buildspec.env.variables,
        vec![(
            "JAVA_HOME".to_string(),
            "/usr/lib/jvm/java-8-openjdk-amd64".to_string()
        )]
    );
    error(
        &["version: 0.2", "environment_variables:", "  plaintext: {A: b}", "phases: {}"],
        "2:1: environment_variables: unknown key, did you mean \"env\"? (`environment_variables` is the version 0.1 spelling)",
    );
}

#[test]
fn unknown_keys_below_top_level_are_warnings() {
    let w = warnings(&[
        "version: 0.2",
        "env:",
        "  compute-type: BUILD_GENERAL1_SMALL",
        "  varibles: {A: b}",
        "phases:",
        "  build:",
        "    comands: [make]",
        "artifacts:",
        "  type: zip",
        "  files: ['**/*']",
        "proxy:",
        "  log: yes",
    ]);
    assert_eq!(
        w,
        vec![
            "3:3: warning: env.compute-type: unknown key, ignored",
            "4:3: warning: env.varibles: unknown key, ignored (did you mean \"variables\"?)",
            "7:5: warning: phases.build.comands: unknown key, ignored (did you mean \"commands\"?)",
            "9:3: warning: artifacts.type: unknown key, ignored",
            "12:3: warning: proxy.log: unknown key, ignored (did you mean \"logs\"?)",
        ]
    );
}

// ---- phases ----

#[test]
fn unknown_phase_is_an_error_with_hint() {
    error(
        &[
            "version: 0.2",
            "phases:",
            "  biuld:",
            "    commands: [make]",
        ],
        "3:3: phases.biuld: unknown phase, did you mean \"build\"?",
    );
    error(
        &[
            "version: 0.2",
            "phases:",
            "  pre-build:",
            "    commands: [make]",
        ],
        "3:3: phases.pre-build: unknown phase, did you mean \"pre_build\"?",
    );
    error(
        &[
            "version: 0.2",
            "phases:",
            "  deploy:",
            "    commands: [make]",
        ],
        "3:3: phases.deploy: unknown phase (expected install, pre_build, build or post_build)",
    );
}

#[test]
fn phases_come_out_in_run_order() {
    let p = ok(&[
        "version: 0.2",
        "phases:",
        "  post_build:",
        "  build:",
        "  install:",
        "  pre_build:",
    ]);
    let order: Vec<CommandPhase> = p.buildspec.phases.iter().map(|(ph, _)| *ph).collect();
    assert_eq!(order, CommandPhase::ALL.to_vec());
}

#[test]
fn null_phase_and_empty_commands_allowed() {
    let p = ok(&[
        "version: 0.2",
        "phases:",
        "  install:",
        "  pre_build:",
        "    commands:",
        "  build:",
        "    commands: []",
        "    finally:",
    ]);
    assert!(p
        .buildspec
        .phases
        .iter()
        .all(|(_, ph)| ph.commands.is_empty()));
}

#[test]
fn commands_keep_source_text_of_numbers_and_booleans() {
    let p = ok(&as_refs(&with_build(&[
        "    commands:",
        "      - 123",
        "      - true",
        "      - 0.10",
        "      - \"echo a: b\"",
        "      - |",
        "        echo one",
        "        echo two",
        "    finally:",
        "      - no",
    ])));
    let ph = p
        .buildspec
        .phase(CommandPhase::Build)
        .cloned()
        .unwrap_or_default();
    let texts: Vec<&str> = ph.commands.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        vec!["123", "true", "0.10", "echo a: b", "echo one\necho two\n"]
    );
    assert_eq!(ph.finally[0].text, "no");
}

#[test]
fn commands_must_be_a_list() {
    error(
        &as_refs(&with_build(&["    commands: make all"])),
        "4:15: phases.build.commands: must be a list of commands (one \"- \" item per command), found a string",
    );
    error(
        &as_refs(&with_build(&["    finally:", "      echo: done"])),
        "5:7: phases.build.finally: must be a list of commands (one \"- \" item per command), found a mapping",
    );
}

#[test]
fn command_read_as_mapping_asks_for_quotes() {
    error(
        &as_refs(&with_build(&["    commands:", "      - echo ok", "      - echo foo: bar"])),
        "6:9: phases.build.commands[1]: command was read as a YAML mapping; quote commands that contain \": \": write it as - \"echo foo: bar\"",
    );
}

#[test]
fn empty_and_nested_command_items() {
    let errs = errors(&as_refs(&with_build(&[
        "    commands:",
        "      - ",
        "      - [a, b]",
    ])));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].ends_with("phases.build.commands[0]: empty command"),
        "{errs:?}"
    );
    assert_eq!(
        errs[1],
        "6:9: phases.build.commands[1]: a command must be a string, found a list"
    );
}

#[test]
fn runtime_versions_only_in_install() {
    let p = ok(&[
        "version: 0.2",
        "phases:",
        "  install:",
        "    runtime-versions:",
        "      python: 3.10",
        "      nodejs: 18",
    ]);
    assert_eq!(
        p.buildspec
            .phase(CommandPhase::Install)
            .map(|ph| ph.runtime_versions.clone()),
        Some(vec![
            ("python".to_string(), "3.10".to_string()),
            ("nodejs".to_string(), "18".to_string())
        ])
    );
    error(
        &as_refs(&with_build(&[
            "    runtime-versions:",
            "      java: corretto17",
        ])),
        "4:5: phases.build.runtime-versions: runtime-versions is only allowed in the install phase",
    );
}

#[test]
fn on_failure_forms() {
    let retry = |count, pattern: Option<&str>| {
        Ok(Some(OnFailure::Retry {
            count,
            pattern: pattern.map(str::to_string),
        }))
    };
    assert_eq!(on_failure("ABORT"), Ok(Some(OnFailure::Abort)));
    assert_eq!(on_failure("abort"), Ok(Some(OnFailure::Abort)));
    assert_eq!(on_failure("Continue"), Ok(Some(OnFailure::Continue)));
    assert_eq!(on_failure("RETRY"), retry(3, None));
    assert_eq!(on_failure("RETRY-5"), retry(5, None));
    assert_eq!(on_failure("retry-0"), retry(0, None));
    assert_eq!(on_failure("RETRY-100"), retry(100, None));
    assert_eq!(on_failure("RETRY-5-foo.*"), retry(5, Some("foo.*")));
    assert_eq!(on_failure("RETRY-foo"), retry(3, Some("foo")));
    assert_eq!(
        on_failure("Retry-.*timeout.*"),
        retry(3, Some(".*timeout.*"))
    );
    assert_eq!(
        on_failure("\"RETRY-2-Error: Unable to connect.*\""),
        retry(2, Some("Error: Unable to connect.*"))
    );
    // Digits not followed by `-` belong to the regex.
    assert_eq!(on_failure("RETRY-5xx"), retry(3, Some("5xx")));
}

#[test]
fn on_failure_errors() {
    assert_eq!(
        on_failure("ABROT"),
        Err(vec!["4:17: phases.build.on-failure: invalid value \"ABROT\", did you mean \"ABORT\"? (expected ABORT, CONTINUE, RETRY, RETRY-<count>, RETRY-<regex> or RETRY-<count>-<regex>)".to_string()])
    );
    assert_eq!(
        on_failure("RETRY-101"),
        Err(vec![
            "4:17: phases.build.on-failure: retry count 101 is out of range (0 to 100)".to_string()
        ])
    );
    assert_eq!(
        on_failure("RETRY-99999999999-x"),
        Err(vec![
            "4:17: phases.build.on-failure: retry count 99999999999 is out of range (0 to 100)"
                .to_string()
        ])
    );
    assert_eq!(
        on_failure("RETRY-2-"),
        Err(vec![
            "4:17: phases.build.on-failure: empty retry regex after \"-\"".to_string()
        ])
    );
    assert_eq!(
        on_failure("RETRY-("),
        Err(vec![
            "4:17: phases.build.on-failure: invalid retry regex \"(\": unclosed group".to_string()
        ])
    );
}

// ---- artifacts ----

#[test]
fn artifacts_full() {
    let p = ok(&[
        "version: 0.2",
        "phases: {}",
        "artifacts:",
        "  files: '**/*'",
        "  name: app-$(date +%Y-%m-%d)",
        "  discard-paths: yes",
        "  base-directory: dist",
        "  exclude-paths: ['**/*.map', '**/.*']",
        "  enable-symlinks: 'no'",
        "  s3-prefix: builds",
        "  secondary-artifacts:",
        "    web_1:",
        "      files: [index.html]",
        "      discard-paths: true",
        "      exclude-paths: '*.tmp'",
    ]);
    let a = p.buildspec.artifacts.expect("artifacts");
    assert_eq!(a.files, vec!["**/*"]);
    assert_eq!(a.name.as_deref(), Some("app-$(date +%Y-%m-%d)"));
    assert!(a.discard_paths && !a.enable_symlinks);
    assert_eq!(a.base_directory.as_deref(), Some("dist"));
    assert_eq!(a.exclude_paths, vec!["**/*.map", "**/.*"]);
    assert_eq!(a.s3_prefix.as_deref(), Some("builds"));
    assert_eq!(a.secondary.len(), 1);
    assert_eq!(a.secondary[0].0, "web_1");
    assert!(a.secondary[0].1.discard_paths);
    assert_eq!(a.secondary[0].1.exclude_paths, vec!["*.tmp"]);
}

#[test]
fn artifacts_files_required_everywhere() {
    error(
        &["version: 0.2", "phases: {}", "artifacts:", "  name: x"],
        "3:1: artifacts.files: required key is missing",
    );
    let errs = errors(&[
        "version: 0.2",
        "phases: {}",
        "artifacts:",
        "  files: [a]",
        "  secondary-artifacts:",
        "    one:",
        "      name: x",
        "    two:",
        "    bad-id:",
        "      files: [a]",
    ]);
    assert_eq!(
        errs,
        vec![
            "6:5: artifacts.secondary-artifacts.one.files: required key is missing",
            "8:5: artifacts.secondary-artifacts.two.files: required key is missing",
            "9:5: artifacts.secondary-artifacts.bad-id: artifact identifiers may only contain letters, digits and _",
        ]
    );
}

#[test]
fn artifacts_type_errors() {
    let errs = errors(&[
        "version: 0.2",
        "phases: {}",
        "artifacts:",
        "  files: {a: b}",
        "  discard-paths: sometimes",
        "  base-directory: [a]",
    ]);
    assert_eq!(
        errs,
        vec![
            "4:10: artifacts.files: must be a list, found a mapping",
            "5:18: artifacts.discard-paths: must be yes, no, true or false, found \"sometimes\"",
            "6:19: artifacts.base-directory: must be a string, found a list",
        ]
    );
}

// ---- cache ----

#[test]
fn cache_full() {
    let p = ok(&[
        "version: 0.2",
        "phases: {}",
        "cache:",
        "  key: npm-$(codebuild-hash-files package-lock.json)",
        "  fallback-keys:",
        "    - npm-",
        "  action: restore",
        "  paths: /root/.npm/**/*",
    ]);
    let c = p.buildspec.cache.expect("cache");
    assert_eq!(c.paths, vec!["/root/.npm/**/*"]);
    assert_eq!(c.fallback_keys, vec!["npm-"]);
    assert_eq!(c.action, Some(CacheAction::Restore));
}

#[test]
fn cache_errors() {
    error(
        &["version: 0.2", "phases: {}", "cache:", "  key: k"],
        "3:1: cache.paths: required key is missing",
    );
    error(
        &[
            "version: 0.2",
            "phases: {}",
            "cache:",
            "  paths: [x]",
            "  key: k",
            "  fallback-keys: [a, b, c, d, e, f]",
        ],
        "6:34: cache.fallback-keys[5]: at most 5 fallback keys are allowed",
    );
    error(
        &[
            "version: 0.2",
            "phases: {}",
            "cache:",
            "  paths: [x]",
            "  action: both",
        ],
        "5:11: cache.action: unsupported action \"both\", expected restore or save",
    );
    assert_eq!(
        warnings(&[
            "version: 0.2",
            "phases: {}",
            "cache:",
            "  paths: [x]",
            "  fallback-keys: [a]"
        ]),
        vec!["5:3: warning: cache.fallback-keys: ignored without `key`"]
    );
}

// ---- reports and proxy ----

#[test]
fn reports() {
    let p = ok(&[
        "version: 0.2",
        "phases: {}",
        "reports:",
        "  unit:",
        "    files: ['**/TEST-*.xml']",
        "    base-directory: target/surefire-reports",
        "    file-format: JunitXml",
        "  arn:aws:codebuild:us-east-1:123456789012:report-group/coverage:",
        "    files: coverage/clover.xml",
        "    discard-paths: yes",
    ]);
    let r = p.buildspec.reports;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].1.file_format.as_deref(), Some("JUNITXML"));
    assert_eq!(r[1].1.files, vec!["coverage/clover.xml"]);
    let errs = errors(&[
        "version: 0.2",
        "phases: {}",
        "reports:",
        "  unit:",
        "    file-format: JUNIT",
        "  other:",
    ]);
    assert_eq!(
        errs,
        vec![
            "4:3: reports.unit.files: required key is missing",
            "5:18: reports.unit.file-format: unknown report file format \"JUNIT\" (expected one of: JUNITXML, CUCUMBERJSON, NUNITXML, NUNIT3XML, TESTNGXML, VISUALSTUDIOTRX, CLOVERXML, COBERTURAXML, JACOCOXML, SIMPLECOV)",
            "6:3: reports.other.files: required key is missing",
        ]
    );
    error(
        &["version: 0.2", "phases: {}", "reports:", "  u:", "    files: [a]", "    file-format: JUNITXM"],
        "6:18: reports.u.file-format: unknown report file format \"JUNITXM\", did you mean \"JUNITXML\"?",
    );
}

#[test]
fn proxy() {
    let p = ok(&[
        "version: 0.2",
        "phases: {}",
        "proxy:",
        "  upload-artifacts: yes",
        "  logs: no",
    ]);
    assert_eq!(
        p.buildspec.proxy,
        Some(crate::model::Proxy {
            upload_artifacts: true,
            logs: false
        })
    );
    error(
        &["version: 0.2", "phases: {}", "proxy: yes"],
        "3:8: proxy: must be a mapping, found a string",
    );
}

// ---- batch ----

#[test]
fn batch_graph() {
    let p = ok(&[
        "version: 0.2",
        "batch:",
        "  fast-fail: true",
        "  build-graph:",
        "    - identifier: build1",
        "      env:",
        "        variables: {BUILD_ID: build1}",
        "      ignore-failure: false",
        "    - identifier: build2",
        "      buildspec: build2.yml",
        "      depend-on:",
        "        - build1",
    ]);
    let b = p.buildspec.batch.expect("batch");
    assert_eq!(b.kind, "build-graph");
    assert!(b.fast_fail);
    assert_eq!(b.identifiers, vec!["build1", "build2"]);
}

#[test]
fn batch_errors() {
    error(
        &["version: 0.2", "batch:", "  fast-fail: true"],
        "2:1: batch: needs exactly one of build-list, build-matrix, build-graph or build-fanout",
    );
    error(
        &[
            "version: 0.2",
            "batch:",
            "  build-list:",
            "    - identifier: a",
            "  build-graph:",
            "    - identifier: b",
        ],
        "5:3: batch.build-graph: only one batch type is allowed, found both build-list and build-graph",
    );
    let errs = errors(&[
        "version: 0.2",
        "batch:",
        "  build-graph:",
        "    - identifier: build_one",
        "    - buildspec: x.yml",
        "      depend-on: [build_on, build_one]",
        "    - identifier: build_one",
        "    - identifier: bad-id",
    ]);
    assert_eq!(
        errs,
        vec![
            "5:7: batch.build-graph[1].identifier: required key is missing",
            "6:19: batch.build-graph[1].depend-on[0]: no build with identifier \"build_on\", did you mean \"build_one\"?",
            "7:19: batch.build-graph[2].identifier: duplicate identifier \"build_one\" (first at 4:19)",
            "8:19: batch.build-graph[3].identifier: identifiers may only contain letters, digits and _",
        ]
    );
}

#[test]
fn batch_matrix_and_fanout() {
    let p = ok(&[
        "version: 0.2",
        "batch:",
        "  build-matrix:",
        "    static:",
        "      ignore-failure: false",
        "    dynamic:",
        "      env:",
        "        image: [aws/codebuild/standard:7.0]",
        "phases:",
        "  build:",
        "    commands: [make]",
    ]);
    assert_eq!(
        p.buildspec.batch.map(|b| b.kind).as_deref(),
        Some("build-matrix")
    );
    ok(&[
        "version: 0.2",
        "batch:",
        "  build-fanout:",
        "    parallelism: 5",
        "phases: {}",
    ]);
    error(
        &[
            "version: 0.2",
            "batch:",
            "  build-fanout:",
            "    parallelism: 0",
            "phases: {}",
        ],
        "4:18: batch.build-fanout.parallelism: must be a positive whole number",
    );
    warnings(&[
        "version: 0.2",
        "batch:",
        "  build-list:",
        "    - identifier: a",
        "      priority: 1",
    ]);
}

// ---- error collection ----

#[test]
fn all_errors_are_collected_and_sorted() {
    let e = parse(
        "buildspec.yml",
        &doc(&[
            "version: 0.2",
            "artifacts:",
            "  name: x",
            "phases:",
            "  biuld:",
            "    commands: [a]",
            "  build:",
            "    on-failure: NOPE",
            "env:",
            "  variables:",
            "    CODEBUILD_X: y",
        ]),
    )
    .expect_err("invalid");
    let lines: Vec<usize> = e.0.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 5, 8, 11]);
    assert!(e.0.iter().all(|d| d.severity == Severity::Error));
    assert_eq!(
        e.0[1].to_string(),
        "buildspec.yml:5:3: phases.biuld: unknown phase, did you mean \"build\"?"
    );
}

#[test]
fn parse_file_reads_and_reports_io_errors() {
    let missing = std::env::temp_dir().join(format!("kiln-missing-{}.yml", std::process::id()));
    let e = parse_file(&missing).expect_err("missing");
    assert_eq!(e.0.len(), 1);
    assert_eq!((e.0[0].line, e.0[0].col), (1, 1));
    assert!(e.0[0].message.starts_with("cannot read buildspec: "), "{e}");
    assert!(e.to_string().starts_with(&missing.display().to_string()));

    let present = std::env::temp_dir().join(format!("kiln-present-{}.yml", std::process::id()));
    std::fs::write(&present, "version: 0.2\nphases:\n  biuld:\n").expect("write");
    let e = parse_file(&present).expect_err("invalid");
    let _ = std::fs::remove_file(&present);
    assert_eq!(e.0[0].file, present.display().to_string());
    assert_eq!((e.0[0].line, e.0[0].col), (3, 3));
}

#[test]
fn the_quoting_hint_is_valid_yaml() {
    let err = parse(
        "b.yml",
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo \"key: it's\"\n",
    )
    .expect_err("mapping command");
    let message = err.0[0].to_string();
    let hint = message.split("write it as - ").nth(1).expect("hint");
    assert_eq!(hint, "'echo \"key: it''s\"'");
    let fixed = format!("version: 0.2\nphases:\n  build:\n    commands:\n      - {hint}\n");
    let parsed = parse("b.yml", &fixed).expect("the hint parses");
    let build = parsed
        .buildspec
        .phase(crate::CommandPhase::Build)
        .expect("build");
    assert_eq!(build.commands[0].text, "echo \"key: it's\"");
}

#[test]
fn run_as_must_be_a_user_name_or_uid() {
    for ok_user in [
        "codebuild-user",
        "1000",
        "1000:1000",
        "app.user",
        "svc_1:staff",
    ] {
        let text = format!(
            "version: 0.2\nrun-as: {ok_user}\nphases:\n  build:\n    commands:\n      - id\n"
        );
        assert!(parse("b.yml", &text).is_ok(), "{ok_user}");
    }
    for bad in ["'bob; rm -rf /'", "'$(id)'", "'-x'", "'a:b:c'", "'~root'"] {
        let text =
            format!("version: 0.2\nrun-as: {bad}\nphases:\n  build:\n    commands:\n      - id\n");
        let err = parse("b.yml", &text).expect_err(bad);
        assert!(
            err.0[0].message.contains("is not a user name or uid"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn kiln_wrapper_names_are_reserved() {
    let err = parse(
        "b.yml",
        "version: 0.2\nenv:\n  variables:\n    __kiln_dir: x\nphases:\n  build:\n    commands:\n      - id\n",
    )
    .expect_err("reserved");
    assert!(
        err.0[0]
            .message
            .contains("names starting with __kiln are reserved"),
        "{err}"
    );
}
