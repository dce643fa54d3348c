//! The build lifecycle as a pure state machine (semantics §2).
//!
//! The worker runs one phase at a time and asks [`route`] what comes next; [`final_status`] folds
//! the statuses of the phases that ran into the build status. Nothing here performs I/O or keeps
//! state: retry counters and phase outputs belong to the caller, so the rules can be tested
//! exhaustively without a container.

use std::fmt;

use regex::Regex;
use serde::Serialize;

use crate::model::{CommandPhase, OnFailure};

/// A build phase, in lifecycle order (the derived `Ord` follows that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PhaseType {
    Submitted,
    Queued,
    Provisioning,
    DownloadSource,
    Install,
    PreBuild,
    Build,
    PostBuild,
    UploadArtifacts,
    Finalizing,
    Completed,
}

impl PhaseType {
    /// Every phase, in the order a fully successful build goes through them.
    pub const ALL: [PhaseType; 11] = [
        PhaseType::Submitted,
        PhaseType::Queued,
        PhaseType::Provisioning,
        PhaseType::DownloadSource,
        PhaseType::Install,
        PhaseType::PreBuild,
        PhaseType::Build,
        PhaseType::PostBuild,
        PhaseType::UploadArtifacts,
        PhaseType::Finalizing,
        PhaseType::Completed,
    ];

    /// The CodeBuild name of the phase (`DOWNLOAD_SOURCE`), identical to the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseType::Submitted => "SUBMITTED",
            PhaseType::Queued => "QUEUED",
            PhaseType::Provisioning => "PROVISIONING",
            PhaseType::DownloadSource => "DOWNLOAD_SOURCE",
            PhaseType::Install => "INSTALL",
            PhaseType::PreBuild => "PRE_BUILD",
            PhaseType::Build => "BUILD",
            PhaseType::PostBuild => "POST_BUILD",
            PhaseType::UploadArtifacts => "UPLOAD_ARTIFACTS",
            PhaseType::Finalizing => "FINALIZING",
            PhaseType::Completed => "COMPLETED",
        }
    }

    /// The buildspec phase that runs in this lifecycle phase, if it is one of the four command
    /// phases.
    pub fn command_phase(self) -> Option<CommandPhase> {
        match self {
            PhaseType::Install => Some(CommandPhase::Install),
            PhaseType::PreBuild => Some(CommandPhase::PreBuild),
            PhaseType::Build => Some(CommandPhase::Build),
            PhaseType::PostBuild => Some(CommandPhase::PostBuild),
            _ => None,
        }
    }

    /// The phase after this one in lifecycle order; `None` after `COMPLETED`.
    pub fn next(self) -> Option<PhaseType> {
        let idx = PhaseType::ALL.iter().position(|p| *p == self)?;
        PhaseType::ALL.get(idx + 1).copied()
    }
}

impl From<CommandPhase> for PhaseType {
    fn from(phase: CommandPhase) -> PhaseType {
        match phase {
            CommandPhase::Install => PhaseType::Install,
            CommandPhase::PreBuild => PhaseType::PreBuild,
            CommandPhase::Build => PhaseType::Build,
            CommandPhase::PostBuild => PhaseType::PostBuild,
        }
    }
}

impl fmt::Display for PhaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phase or build status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Succeeded,
    Failed,
    Fault,
    TimedOut,
    InProgress,
    Stopped,
}

impl Status {
    /// The CodeBuild name of the status (`TIMED_OUT`), identical to the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::Fault => "FAULT",
            Status::TimedOut => "TIMED_OUT",
            Status::InProgress => "IN_PROGRESS",
            Status::Stopped => "STOPPED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the worker does after a phase ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Run the same phase again (its `commands` then `finally`, from the state it started with).
    Retry,
    /// Continue with this phase. `Goto(Completed)` means the build is over.
    Goto(PhaseType),
}

/// What follows a phase that ended with `status`.
///
/// `on_failure` is only honoured for the four command phases (it is ignored for any other
/// phase). `retries_done` is how many times this phase was already re-run. `failure_message` is
/// the phase context message plus the last 4 KiB of the phase output; a RETRY regex is searched
/// in it unanchored (like [`Regex::is_match`]).
///
/// `COMPLETED` is terminal: routing from it always yields `Goto(Completed)`.
pub fn route(
    phase: PhaseType,
    status: Status,
    on_failure: Option<&OnFailure>,
    retries_done: u32,
    failure_message: &str,
) -> Route {
    match status {
        Status::Succeeded => Route::Goto(phase.next().unwrap_or(PhaseType::Completed)),
        Status::Failed => {
            // on-failure is a buildspec phase key; a value handed in for another phase is a
            // caller mistake, and ignoring it keeps the lifecycle phases on the spec's table.
            let on_failure = if phase.command_phase().is_some() {
                on_failure
            } else {
                None
            };
            match on_failure {
                None => Route::Goto(default_failure_route(phase)),
                Some(OnFailure::Continue) => {
                    Route::Goto(phase.next().unwrap_or(PhaseType::Completed))
                }
                Some(OnFailure::Abort) => Route::Goto(PhaseType::Finalizing),
                Some(OnFailure::Retry { count, pattern }) => {
                    if retries_done < *count
                        && retry_pattern_matches(pattern.as_deref(), failure_message)
                    {
                        Route::Retry
                    } else {
                        // After the last try (or when the message does not match) the phase
                        // behaves as if it had no on-failure at all (semantics §2).
                        Route::Goto(default_failure_route(phase))
                    }
                }
            }
        }
        // A phase that "ended" still IN_PROGRESS means Kiln lost track of it: that is Kiln's own
        // failure, so it is routed like FAULT rather than trusted as a result.
        Status::TimedOut | Status::Stopped | Status::Fault | Status::InProgress => {
            Route::Goto(abnormal_end_route(phase))
        }
    }
}

/// Routing after FAILED when no `on-failure` applies (the table in semantics §2).
fn default_failure_route(phase: PhaseType) -> PhaseType {
    match phase {
        // Before and during provisioning there is no container to finalize.
        PhaseType::Submitted | PhaseType::Queued | PhaseType::Provisioning => PhaseType::Completed,
        PhaseType::DownloadSource | PhaseType::Install | PhaseType::PreBuild => {
            PhaseType::Finalizing
        }
        PhaseType::Build => PhaseType::PostBuild,
        PhaseType::PostBuild => PhaseType::UploadArtifacts,
        PhaseType::UploadArtifacts => PhaseType::Finalizing,
        PhaseType::Finalizing | PhaseType::Completed => PhaseType::Completed,
    }
}

/// Routing after TIMED_OUT, STOPPED or FAULT: the build is over, so only FINALIZING (clean-up)
/// is left to run, and only when there is a container to clean up and it is not what just ended.
fn abnormal_end_route(phase: PhaseType) -> PhaseType {
    match phase {
        PhaseType::Submitted
        | PhaseType::Queued
        | PhaseType::Provisioning
        | PhaseType::Finalizing
        | PhaseType::Completed => PhaseType::Completed,
        PhaseType::DownloadSource
        | PhaseType::Install
        | PhaseType::PreBuild
        | PhaseType::Build
        | PhaseType::PostBuild
        | PhaseType::UploadArtifacts => PhaseType::Finalizing,
    }
}

/// Whether a RETRY pattern (`None` = `.*`) occurs anywhere in the failure message.
fn retry_pattern_matches(pattern: Option<&str>, failure_message: &str) -> bool {
    match pattern {
        None => true,
        // Validation already compiled the pattern; should it fail here anyway, not retrying is
        // the safe answer (the phase stays failed instead of looping on an unknown condition).
        Some(p) => Regex::new(p).is_ok_and(|re| re.is_match(failure_message)),
    }
}

/// The build status from the statuses of the phases that ran (one per phase: for a retried
/// phase, the status of its last try).
///
/// Precedence: STOPPED > TIMED_OUT > FAULT > FAILED > SUCCEEDED. A phase still IN_PROGRESS when
/// the build is finished counts as FAULT (Kiln failed to record its end). No phases at all is
/// SUCCEEDED (nothing failed).
pub fn final_status(statuses: impl IntoIterator<Item = Status>) -> Status {
    fn rank(status: Status) -> u8 {
        match status {
            Status::Succeeded => 0,
            Status::Failed => 1,
            Status::Fault | Status::InProgress => 2,
            Status::TimedOut => 3,
            Status::Stopped => 4,
        }
    }
    statuses
        .into_iter()
        .map(|s| {
            if s == Status::InProgress {
                Status::Fault
            } else {
                s
            }
        })
        .max_by_key(|s| rank(*s))
        .unwrap_or(Status::Succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PhaseType::*;

    fn fail(phase: PhaseType) -> Route {
        route(phase, Status::Failed, None, 0, "boom")
    }

    fn retry(count: u32, pattern: Option<&str>) -> OnFailure {
        OnFailure::Retry {
            count,
            pattern: pattern.map(str::to_string),
        }
    }

    // --- PhaseType basics ---

    #[test]
    fn as_str_matches_codebuild_names() {
        let names: Vec<&str> = PhaseType::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "SUBMITTED",
                "QUEUED",
                "PROVISIONING",
                "DOWNLOAD_SOURCE",
                "INSTALL",
                "PRE_BUILD",
                "BUILD",
                "POST_BUILD",
                "UPLOAD_ARTIFACTS",
                "FINALIZING",
                "COMPLETED"
            ]
        );
    }

    #[test]
    fn serde_names_equal_as_str() {
        // as_str must agree with serde's SCREAMING_SNAKE_CASE rename of the variant names; the
        // crate has no serializer dependency, so apply the rename rule by hand to the Debug name.
        for p in PhaseType::ALL {
            let debug = format!("{p:?}");
            let mut screaming = String::new();
            for (i, c) in debug.chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    screaming.push('_');
                }
                screaming.push(c.to_ascii_uppercase());
            }
            assert_eq!(screaming, p.as_str());
        }
        for s in [
            Status::Succeeded,
            Status::Failed,
            Status::Fault,
            Status::TimedOut,
            Status::InProgress,
            Status::Stopped,
        ] {
            let debug = format!("{s:?}");
            let mut screaming = String::new();
            for (i, c) in debug.chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    screaming.push('_');
                }
                screaming.push(c.to_ascii_uppercase());
            }
            assert_eq!(screaming, s.as_str());
            assert_eq!(s.to_string(), s.as_str());
        }
    }

    #[test]
    fn status_as_str() {
        assert_eq!(Status::TimedOut.as_str(), "TIMED_OUT");
        assert_eq!(Status::InProgress.as_str(), "IN_PROGRESS");
        assert_eq!(Status::Succeeded.as_str(), "SUCCEEDED");
    }

    #[test]
    fn next_follows_lifecycle_order() {
        assert_eq!(Submitted.next(), Some(Queued));
        assert_eq!(DownloadSource.next(), Some(Install));
        assert_eq!(PostBuild.next(), Some(UploadArtifacts));
        assert_eq!(Finalizing.next(), Some(Completed));
        assert_eq!(Completed.next(), None);
        for w in PhaseType::ALL.windows(2) {
            assert_eq!(w[0].next(), Some(w[1]));
            assert!(w[0] < w[1], "Ord follows lifecycle order");
        }
    }

    #[test]
    fn command_phase_round_trips() {
        for c in CommandPhase::ALL {
            assert_eq!(PhaseType::from(c).command_phase(), Some(c));
        }
        let command_phases: Vec<PhaseType> = PhaseType::ALL
            .into_iter()
            .filter(|p| p.command_phase().is_some())
            .collect();
        assert_eq!(command_phases, [Install, PreBuild, Build, PostBuild]);
        assert_eq!(
            PhaseType::from(CommandPhase::PreBuild).to_string(),
            "PRE_BUILD"
        );
    }

    // --- success ---

    #[test]
    fn success_goes_to_next_phase() {
        for w in PhaseType::ALL.windows(2) {
            assert_eq!(
                route(w[0], Status::Succeeded, None, 0, ""),
                Route::Goto(w[1])
            );
        }
        assert_eq!(
            route(Finalizing, Status::Succeeded, None, 0, ""),
            Route::Goto(Completed)
        );
        assert_eq!(
            route(Completed, Status::Succeeded, None, 0, ""),
            Route::Goto(Completed)
        );
    }

    #[test]
    fn success_ignores_on_failure() {
        for of in [OnFailure::Abort, OnFailure::Continue, retry(3, None)] {
            assert_eq!(
                route(Build, Status::Succeeded, Some(&of), 0, ""),
                Route::Goto(PostBuild)
            );
        }
    }

    // --- default failure routing: one test per row of the table ---

    #[test]
    fn failed_provisioning_goes_to_completed() {
        assert_eq!(fail(Provisioning), Route::Goto(Completed));
    }

    #[test]
    fn failed_download_source_goes_to_finalizing() {
        assert_eq!(fail(DownloadSource), Route::Goto(Finalizing));
    }

    #[test]
    fn failed_install_goes_to_finalizing() {
        assert_eq!(fail(Install), Route::Goto(Finalizing));
    }

    #[test]
    fn failed_pre_build_goes_to_finalizing() {
        assert_eq!(fail(PreBuild), Route::Goto(Finalizing));
    }

    #[test]
    fn failed_build_goes_to_post_build() {
        assert_eq!(fail(Build), Route::Goto(PostBuild));
    }

    #[test]
    fn failed_post_build_goes_to_upload_artifacts() {
        assert_eq!(fail(PostBuild), Route::Goto(UploadArtifacts));
    }

    #[test]
    fn failed_upload_artifacts_goes_to_finalizing() {
        assert_eq!(fail(UploadArtifacts), Route::Goto(Finalizing));
    }

    #[test]
    fn failed_finalizing_goes_to_completed() {
        assert_eq!(fail(Finalizing), Route::Goto(Completed));
    }

    #[test]
    fn failed_before_provisioning_goes_to_completed() {
        assert_eq!(fail(Submitted), Route::Goto(Completed));
        assert_eq!(fail(Queued), Route::Goto(Completed));
        assert_eq!(fail(Completed), Route::Goto(Completed));
    }

    // --- on-failure forms ---

    #[test]
    fn continue_goes_to_next_phase_as_if_succeeded() {
        let c = OnFailure::Continue;
        assert_eq!(
            route(Install, Status::Failed, Some(&c), 0, ""),
            Route::Goto(PreBuild)
        );
        assert_eq!(
            route(PreBuild, Status::Failed, Some(&c), 0, ""),
            Route::Goto(Build)
        );
        assert_eq!(
            route(Build, Status::Failed, Some(&c), 0, ""),
            Route::Goto(PostBuild)
        );
        assert_eq!(
            route(PostBuild, Status::Failed, Some(&c), 0, ""),
            Route::Goto(UploadArtifacts)
        );
    }

    #[test]
    fn abort_goes_to_finalizing() {
        let a = OnFailure::Abort;
        for p in [Install, PreBuild, Build, PostBuild] {
            assert_eq!(
                route(p, Status::Failed, Some(&a), 0, ""),
                Route::Goto(Finalizing)
            );
        }
    }

    #[test]
    fn retry_default_pattern_retries_until_count() {
        let r = retry(3, None);
        for done in 0..3 {
            assert_eq!(
                route(Build, Status::Failed, Some(&r), done, "x"),
                Route::Retry
            );
        }
        // Exhausted: default routing for BUILD.
        assert_eq!(
            route(Build, Status::Failed, Some(&r), 3, "x"),
            Route::Goto(PostBuild)
        );
        assert_eq!(
            route(Build, Status::Failed, Some(&r), 7, "x"),
            Route::Goto(PostBuild)
        );
    }

    #[test]
    fn retry_default_pattern_matches_empty_message() {
        let r = retry(1, None);
        assert_eq!(
            route(Install, Status::Failed, Some(&r), 0, ""),
            Route::Retry
        );
    }

    #[test]
    fn retry_zero_never_retries() {
        let r = retry(0, None);
        assert_eq!(
            route(Install, Status::Failed, Some(&r), 0, "x"),
            Route::Goto(Finalizing)
        );
        assert_eq!(
            route(Build, Status::Failed, Some(&r), 0, "x"),
            Route::Goto(PostBuild)
        );
    }

    #[test]
    fn retry_with_matching_regex_retries() {
        let r = retry(2, Some("Unable to connect to database"));
        let msg = "Error while executing command: ./migrate. Reason: exit status 1\n\
                   ...\nError: Unable to connect to database at 10.0.0.1\n";
        assert_eq!(
            route(PreBuild, Status::Failed, Some(&r), 0, msg),
            Route::Retry
        );
        assert_eq!(
            route(PreBuild, Status::Failed, Some(&r), 1, msg),
            Route::Retry
        );
        assert_eq!(
            route(PreBuild, Status::Failed, Some(&r), 2, msg),
            Route::Goto(Finalizing),
            "retries exhausted: default routing"
        );
    }

    #[test]
    fn retry_regex_is_an_unanchored_search() {
        let r = retry(3, Some("exit status [0-9]+"));
        assert_eq!(
            route(
                Build,
                Status::Failed,
                Some(&r),
                0,
                "Reason: exit status 42 (tail)"
            ),
            Route::Retry
        );
        let anchored = retry(3, Some("^Reason"));
        assert_eq!(
            route(Build, Status::Failed, Some(&anchored), 0, "x Reason"),
            Route::Goto(PostBuild),
            "an explicit anchor is honoured"
        );
    }

    #[test]
    fn retry_with_non_matching_regex_uses_default_routing() {
        let r = retry(3, Some("timeout"));
        assert_eq!(
            route(Install, Status::Failed, Some(&r), 0, "exit status 2"),
            Route::Goto(Finalizing)
        );
        assert_eq!(
            route(Build, Status::Failed, Some(&r), 0, "exit status 2"),
            Route::Goto(PostBuild)
        );
        assert_eq!(
            route(PostBuild, Status::Failed, Some(&r), 0, "exit status 2"),
            Route::Goto(UploadArtifacts)
        );
    }

    #[test]
    fn retry_with_invalid_regex_does_not_retry() {
        let r = retry(3, Some("(unclosed"));
        assert_eq!(
            route(Build, Status::Failed, Some(&r), 0, "(unclosed"),
            Route::Goto(PostBuild)
        );
    }

    #[test]
    fn on_failure_ignored_for_non_command_phases() {
        for of in [OnFailure::Abort, OnFailure::Continue, retry(3, None)] {
            assert_eq!(
                route(Provisioning, Status::Failed, Some(&of), 0, ""),
                Route::Goto(Completed)
            );
            assert_eq!(
                route(DownloadSource, Status::Failed, Some(&of), 0, ""),
                Route::Goto(Finalizing)
            );
            assert_eq!(
                route(UploadArtifacts, Status::Failed, Some(&of), 0, ""),
                Route::Goto(Finalizing)
            );
        }
    }

    // --- abnormal ends ---

    #[test]
    fn timed_out_stopped_fault_go_to_finalizing() {
        for status in [Status::TimedOut, Status::Stopped, Status::Fault] {
            for p in [
                DownloadSource,
                Install,
                PreBuild,
                Build,
                PostBuild,
                UploadArtifacts,
            ] {
                assert_eq!(
                    route(p, status, None, 0, ""),
                    Route::Goto(Finalizing),
                    "{p} {status}"
                );
            }
        }
    }

    #[test]
    fn abnormal_end_of_provisioning_or_finalizing_goes_to_completed() {
        for status in [Status::TimedOut, Status::Stopped, Status::Fault] {
            for p in [Submitted, Queued, Provisioning, Finalizing, Completed] {
                assert_eq!(
                    route(p, status, None, 0, ""),
                    Route::Goto(Completed),
                    "{p} {status}"
                );
            }
        }
    }

    #[test]
    fn on_failure_never_applies_to_abnormal_ends() {
        for status in [Status::TimedOut, Status::Stopped, Status::Fault] {
            for of in [OnFailure::Continue, OnFailure::Abort, retry(5, None)] {
                assert_eq!(
                    route(Build, status, Some(&of), 0, "anything"),
                    Route::Goto(Finalizing)
                );
                assert_eq!(
                    route(Install, status, Some(&of), 0, "anything"),
                    Route::Goto(Finalizing)
                );
            }
        }
    }

    #[test]
    fn in_progress_end_is_routed_like_fault() {
        assert_eq!(
            route(Build, Status::InProgress, None, 0, ""),
            Route::Goto(Finalizing)
        );
        assert_eq!(
            route(Provisioning, Status::InProgress, None, 0, ""),
            Route::Goto(Completed)
        );
    }

    // --- final status ---

    #[test]
    fn final_status_all_succeeded() {
        assert_eq!(
            final_status([Status::Succeeded, Status::Succeeded]),
            Status::Succeeded
        );
        assert_eq!(final_status([]), Status::Succeeded);
    }

    #[test]
    fn final_status_precedence() {
        use Status::*;
        assert_eq!(final_status([Succeeded, Failed, Succeeded]), Failed);
        assert_eq!(final_status([Failed, Fault]), Fault);
        assert_eq!(final_status([Fault, Failed]), Fault);
        assert_eq!(final_status([Failed, TimedOut, Fault]), TimedOut);
        assert_eq!(final_status([Stopped, TimedOut, Fault, Failed]), Stopped);
        assert_eq!(final_status([TimedOut, Stopped]), Stopped);
        assert_eq!(final_status(vec![Succeeded; 9]), Succeeded);
    }

    #[test]
    fn final_status_in_progress_counts_as_fault() {
        use Status::*;
        assert_eq!(final_status([Succeeded, InProgress]), Fault);
        assert_eq!(final_status([InProgress, TimedOut]), TimedOut);
        assert_eq!(final_status([Failed, InProgress]), Fault);
    }

    #[test]
    fn continue_build_still_ends_failed() {
        // CONTINUE routes on, but the failed phase's status keeps the build FAILED.
        use Status::*;
        let of = OnFailure::Continue;
        assert_eq!(
            route(Install, Failed, Some(&of), 0, ""),
            Route::Goto(PreBuild)
        );
        assert_eq!(
            final_status([Succeeded, Failed, Succeeded, Succeeded]),
            Failed
        );
    }
}
