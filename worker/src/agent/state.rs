//! The agent's bookkeeping of its builds across connections: which leases it holds, what each
//! build still has to report, and what the coordinator's answers do to them. Pure (no network, no
//! Docker), so the protocol rules are tested on their own.
//!
//! A build is tracked from its `Assignment` until the coordinator acknowledges its `Completed`
//! (or refuses it). `Completed` goes out only once every log chunk is acknowledged, so the
//! coordinator holds the whole log when it records the end; it is sent once per connection and
//! again after a reconnect. An abandoned build (`Reject`, or `resumed: false` in `Welcome`) is
//! stopped, its buffered log dropped, and it is forgotten once its task ends: its slot stays
//! taken until then, but it is neither heartbeated nor reported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use kiln_proto::v1::{
    worker_message::Kind, Completed, Heartbeat, LeaseRef, LogData, PhaseStarted, Resume,
    WorkerMessage,
};
use tokio_util::sync::CancellationToken;

use super::outbox::{LogOutbox, Outgoing};

/// One build the agent holds a lease for.
pub struct Tracked {
    pub epoch: u64,
    /// Stops the phase runner (the build ends STOPPED); a child of `abandon`.
    pub stop: CancellationToken,
    /// Ends everything about the build, also retries of its artifact upload.
    pub abandon: CancellationToken,
    pub outbox: Arc<LogOutbox>,
    /// The final report, once the build's task has ended.
    report: Option<Completed>,
    /// `report` went out on the current connection.
    report_sent: bool,
    abandoned: bool,
}

/// The builds of one agent.
pub struct Builds {
    slots: u32,
    builds: BTreeMap<String, Tracked>,
}

impl Builds {
    pub fn new(slots: u32) -> Builds {
        Builds {
            slots,
            builds: BTreeMap::new(),
        }
    }

    /// Nothing left to run or report.
    pub fn is_empty(&self) -> bool {
        self.builds.is_empty()
    }

    /// Slots not taken by a build whose task still runs.
    pub fn free_slots(&self) -> u32 {
        let busy = self.builds.values().filter(|b| b.report.is_none()).count();
        self.slots
            .saturating_sub(u32::try_from(busy).unwrap_or(u32::MAX))
    }

    /// The leases the agent holds (for `Hello` and `Heartbeat`).
    pub fn leases(&self) -> Vec<LeaseRef> {
        self.builds
            .iter()
            .filter(|(_, b)| !b.abandoned)
            .map(|(id, b)| LeaseRef {
                build_id: id.clone(),
                epoch: b.epoch,
            })
            .collect()
    }

    pub fn heartbeat(&self) -> WorkerMessage {
        message(Kind::Heartbeat(Heartbeat {
            running: self.leases(),
            free_slots: self.free_slots(),
        }))
    }

    /// Starts tracking a new assignment; `None` when the build is already tracked (a duplicate
    /// assignment is not run twice).
    pub fn insert(
        &mut self,
        build_id: &str,
        epoch: u64,
        outbox: impl FnOnce(CancellationToken) -> Arc<LogOutbox>,
    ) -> Option<&Tracked> {
        if self.builds.contains_key(build_id) {
            return None;
        }
        let abandon = CancellationToken::new();
        let stop = abandon.child_token();
        let tracked = Tracked {
            epoch,
            outbox: outbox(stop.clone()),
            stop,
            abandon,
            report: None,
            report_sent: false,
            abandoned: false,
        };
        Some(self.builds.entry(build_id.to_string()).or_insert(tracked))
    }

    fn current(&mut self, build_id: &str, epoch: u64) -> Option<&mut Tracked> {
        self.builds
            .get_mut(build_id)
            .filter(|b| b.epoch == epoch && !b.abandoned)
    }

    /// A new connection: unacknowledged chunks and unacknowledged reports go out again.
    pub fn on_connected(&mut self) {
        for b in self.builds.values_mut() {
            b.report_sent = false;
            b.outbox.rewind(None);
        }
    }

    /// `Welcome`'s verdicts on the builds listed in `Hello`.
    pub fn on_welcome(&mut self, resumed: &[Resume]) {
        for r in resumed {
            if r.resumed {
                if let Some(b) = self.current(&r.build_id, r.epoch) {
                    b.outbox.rewind(Some(r.next_log_seq));
                }
            } else {
                self.abandon(&r.build_id, r.epoch, "the coordinator did not resume it");
            }
        }
    }

    /// `Cancel`: the build stops and then reports STOPPED.
    pub fn on_cancel(&mut self, build_id: &str, epoch: u64) {
        if let Some(b) = self.current(build_id, epoch) {
            b.stop.cancel();
        }
    }

    pub fn on_log_ack(&mut self, build_id: &str, epoch: u64, next_seq: u64) {
        if let Some(b) = self.current(build_id, epoch) {
            b.outbox.ack(next_seq);
        }
    }

    /// `CompletedAck`: the build is over for the agent.
    pub fn on_completed_ack(&mut self, build_id: &str, epoch: u64) {
        if self
            .current(build_id, epoch)
            .is_some_and(|b| b.report.is_some())
        {
            self.builds.remove(build_id);
        }
    }

    /// `Reject` or `resumed: false`: stop the build if it still runs and drop its reports.
    pub fn abandon(&mut self, build_id: &str, epoch: u64, why: &str) {
        let Some(b) = self.current(build_id, epoch) else {
            return;
        };
        tracing::warn!(build_id, epoch, reason = why, "abandoning the build");
        b.abandoned = true;
        b.abandon.cancel();
        b.outbox.close();
        if b.report.is_some() {
            self.builds.remove(build_id);
        }
    }

    /// The build's task ended; `report` is `None` when it gave up (its lease is gone).
    pub fn on_finished(&mut self, build_id: &str, epoch: u64, report: Option<Completed>) {
        let Some(b) = self.builds.get_mut(build_id).filter(|b| b.epoch == epoch) else {
            return;
        };
        match report {
            Some(report) if !b.abandoned => b.report = Some(report),
            _ => {
                self.builds.remove(build_id);
            }
        }
    }

    /// Everything to send now: log chunks and phase starts, then reports whose log is stored.
    pub fn outgoing(&mut self, now: Instant) -> Vec<WorkerMessage> {
        let mut out = Vec::new();
        for (id, b) in self.builds.iter_mut().filter(|(_, b)| !b.abandoned) {
            for item in b.outbox.take(now) {
                out.push(match item {
                    Outgoing::Log { seq, data } => message(Kind::Log(LogData {
                        build_id: id.clone(),
                        epoch: b.epoch,
                        seq,
                        data,
                    })),
                    Outgoing::Phase(phase) => message(Kind::PhaseStarted(PhaseStarted {
                        build_id: id.clone(),
                        epoch: b.epoch,
                        phase_type: phase.to_string(),
                    })),
                });
            }
            if let Some(report) = b.report.as_ref().filter(|_| !b.report_sent) {
                if b.outbox.all_acked() {
                    out.push(message(Kind::Completed(report.clone())));
                    b.report_sent = true;
                }
            }
        }
        out
    }
}

pub fn message(kind: Kind) -> WorkerMessage {
    WorkerMessage { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::super::outbox::OutboxLimits;
    use super::*;
    use tokio::sync::Notify;

    fn builds_with(ids: &[(&str, u64)]) -> Builds {
        let mut builds = Builds::new(2);
        for (id, epoch) in ids {
            builds
                .insert(id, *epoch, |stop| {
                    LogOutbox::new(OutboxLimits::default(), Arc::new(Notify::new()), stop)
                })
                .expect("new build");
        }
        builds
    }

    fn kinds(msgs: &[WorkerMessage]) -> Vec<String> {
        msgs.iter()
            .map(|m| match &m.kind {
                Some(Kind::Log(l)) => format!("log {} {}", l.build_id, l.seq),
                Some(Kind::PhaseStarted(p)) => format!("phase {} {}", p.build_id, p.phase_type),
                Some(Kind::Completed(c)) => format!("completed {}", c.build_id),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn report(id: &str, epoch: u64) -> Option<Completed> {
        Some(Completed {
            build_id: id.into(),
            epoch,
            build_status: "SUCCEEDED".into(),
            ..Default::default()
        })
    }

    #[test]
    fn completed_waits_for_the_log_and_is_resent_until_acknowledged() {
        let mut builds = builds_with(&[("p:1", 3)]);
        let outbox = builds.builds["p:1"].outbox.clone();
        outbox.write(b"hello\n");
        outbox.seal();
        builds.on_finished("p:1", 3, report("p:1", 3));
        assert_eq!(builds.free_slots(), 2, "a finished build holds no slot");
        assert_eq!(kinds(&builds.outgoing(Instant::now())), ["log p:1 0"]);
        builds.on_log_ack("p:1", 2, 1); // stale epoch: ignored
        assert!(kinds(&builds.outgoing(Instant::now())).is_empty());
        builds.on_log_ack("p:1", 3, 1);
        assert_eq!(kinds(&builds.outgoing(Instant::now())), ["completed p:1"]);
        assert!(builds.outgoing(Instant::now()).is_empty(), "sent once");
        // The stream broke before the ack: the report goes out again.
        builds.on_connected();
        assert_eq!(kinds(&builds.outgoing(Instant::now())), ["completed p:1"]);
        builds.on_completed_ack("p:1", 3);
        assert!(builds.is_empty());
    }

    #[test]
    fn welcome_resumes_from_the_expected_chunk_or_abandons() {
        let mut builds = builds_with(&[("p:a", 1), ("p:b", 1)]);
        let (a, b) = (
            builds.builds["p:a"].outbox.clone(),
            builds.builds["p:b"].outbox.clone(),
        );
        let stop_b = builds.builds["p:b"].stop.clone();
        for o in [&a, &b] {
            o.phase(kiln_buildspec::routing::PhaseType::Build);
            o.write(b"x");
            o.seal();
        }
        let _ = builds.outgoing(Instant::now());
        builds.on_connected();
        builds.on_welcome(&[
            Resume {
                build_id: "p:a".into(),
                epoch: 1,
                resumed: true,
                next_log_seq: 1,
            },
            Resume {
                build_id: "p:b".into(),
                epoch: 1,
                resumed: false,
                next_log_seq: 0,
            },
        ]);
        assert!(stop_b.is_cancelled(), "an unresumed build is stopped");
        assert_eq!(builds.leases().len(), 1);
        assert!(kinds(&builds.outgoing(Instant::now())).is_empty());
        builds.on_finished("p:a", 1, report("p:a", 1));
        assert_eq!(kinds(&builds.outgoing(Instant::now())), ["completed p:a"]);
        // The abandoned build's task ends: it is forgotten, nothing is reported.
        builds.on_finished("p:b", 1, report("p:b", 1));
        builds.on_completed_ack("p:a", 1);
        assert!(builds.is_empty());
    }

    #[test]
    fn cancel_stops_and_reject_drops() {
        let mut builds = builds_with(&[("p:1", 5)]);
        let stop = builds.builds["p:1"].stop.clone();
        builds.on_cancel("p:1", 4);
        assert!(!stop.is_cancelled(), "a stale epoch cancels nothing");
        builds.on_cancel("p:1", 5);
        assert!(stop.is_cancelled());
        assert_eq!(builds.free_slots(), 1);
        builds.abandon("p:1", 5, "rejected");
        assert!(builds.leases().is_empty(), "no heartbeat for it any more");
        assert_eq!(builds.free_slots(), 1, "its task still runs");
        builds.on_finished("p:1", 5, None);
        assert!(builds.is_empty());
        assert_eq!(builds.free_slots(), 2);
    }

    #[test]
    fn duplicate_assignments_are_not_tracked_twice() {
        let mut builds = builds_with(&[("p:1", 1)]);
        let again = builds.insert("p:1", 1, |stop| {
            LogOutbox::new(OutboxLimits::default(), Arc::new(Notify::new()), stop)
        });
        assert!(again.is_none());
        match builds.heartbeat().kind {
            Some(Kind::Heartbeat(h)) => {
                assert_eq!(h.running.len(), 1);
                assert_eq!(h.free_slots, 1);
            }
            other => panic!("not a heartbeat: {other:?}"),
        }
    }
}
