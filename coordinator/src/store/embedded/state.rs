//! The embedded store's state in memory: build rows, kept prost-encoded, and the indexes over
//! them. Live changes and journal replay go through the same [`State::store_build`], so what a
//! restart rebuilds is exactly what the live store held.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use kiln_proto::v1::{CacheEntry, Project, StoredBuild};
use prost::Message;

use super::journal::Record;
use crate::store::{
    cache_slot, decode_row, id_and_project, queue_rank, stamp_new, Created, QueueChange,
    StoreError, StoreResult, Updated,
};

/// Where a build stands: it decides which indexes hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// In the queue and the deadline index.
    Queued,
    /// In the active set, counted in its project's running builds.
    Claimed,
    /// In neither (the build ended).
    Finished,
}

impl Placement {
    fn after(self, change: QueueChange) -> Placement {
        match change {
            QueueChange::Keep => self,
            QueueChange::Enqueue => Placement::Queued,
            QueueChange::Claim { .. } => Placement::Claimed,
            QueueChange::Finish => Placement::Finished,
        }
    }
}

struct Entry {
    id: Arc<str>,
    project: Arc<str>,
    version: u64,
    placement: Placement,
    /// The queue rank and deadline the build is (or would be) queued with.
    rank: u64,
    deadline_ms: i64,
    row: Bytes,
}

#[derive(Default)]
struct ProjectBuilds {
    last_number: u64,
    running: usize,
    /// `queue_seq`s of the project's builds.
    index: BTreeSet<u64>,
}

/// Everything the embedded store holds except logs. Builds are keyed by the `queue_seq` they got
/// at creation, which is also creation order, so the main map doubles as the newest-first index.
#[derive(Default)]
pub(super) struct State {
    builds: BTreeMap<u64, Entry>,
    ids: HashMap<Arc<str>, u64>,
    /// Queue rank to `queue_seq`.
    queue: BTreeMap<u64, u64>,
    /// (deadline, `queue_seq`) of queued builds.
    deadlines: BTreeSet<(i64, u64)>,
    active: BTreeSet<u64>,
    per_project: HashMap<Arc<str>, ProjectBuilds>,
    tokens: HashMap<Box<str>, u64>,
    projects: BTreeMap<String, Bytes>,
    /// Cache entries by (project, [`cache_slot`]).
    caches: BTreeMap<(String, String), Bytes>,
    last_seq: u64,
}

/// A build row as stored: the bytes the journal and reads use.
fn encode(build: &StoredBuild) -> Bytes {
    Bytes::from(build.encode_to_vec())
}

impl State {
    /// [`crate::store::StateStore::create_build`]; the record to journal when something changed.
    pub(super) fn create(
        &mut self,
        mut build: StoredBuild,
        token: Option<String>,
    ) -> StoreResult<(Created, Option<Record>)> {
        let earlier = match &token {
            Some(token) => self.tokens.get(token.as_str()).copied(),
            None => None,
        };
        let (id, project) = id_and_project(&build);
        if let Some(seq) = earlier.or_else(|| self.ids.get(id).copied()) {
            return Ok((Created::Existing(self.decode(seq)?), None));
        }
        let number = self.per_project.get(project).map_or(0, |p| p.last_number) + 1;
        stamp_new(&mut build, number, self.last_seq + 1);
        let row = encode(&build);
        self.store_build(&build, row.clone(), Placement::Queued, token.as_deref())?;
        let record = Record::Build {
            placement: Placement::Queued,
            token,
            row,
        };
        Ok((Created::New(build), Some(record)))
    }

    /// [`crate::store::StateStore::update_build`].
    pub(super) fn update(
        &mut self,
        mut build: StoredBuild,
        change: QueueChange,
    ) -> StoreResult<(Updated, Option<Record>)> {
        let (id, _) = id_and_project(&build);
        let Some(entry) = self.ids.get(id).and_then(|seq| self.builds.get(seq)) else {
            return Ok((Updated::Missing, None));
        };
        if entry.version != build.version {
            return Ok((Updated::Conflict, None));
        }
        if let QueueChange::Claim { limit } = change {
            let running = self
                .per_project
                .get(&entry.project)
                .map_or(0, |p| p.running);
            if limit > 0 && entry.placement != Placement::Claimed && running >= limit as usize {
                return Ok((Updated::LimitReached, None));
            }
        }
        let placement = entry.placement.after(change);
        build.version += 1;
        let row = encode(&build);
        self.store_build(&build, row.clone(), placement, None)?;
        let record = Record::Build {
            placement,
            token: None,
            row,
        };
        Ok((Updated::Done(build), Some(record)))
    }

    /// Stores a build row with its placement (and the idempotency token that created it),
    /// inserting or updating, and moves it between indexes. Storing the same row twice changes
    /// nothing, which replay after compaction relies on.
    fn store_build(
        &mut self,
        build: &StoredBuild,
        row: Bytes,
        placement: Placement,
        token: Option<&str>,
    ) -> StoreResult<()> {
        let (id, project) = id_and_project(build);
        let seq = match self.ids.get(id) {
            Some(&seq) => {
                self.unplace(seq);
                seq
            }
            None => self.insert_new(id, project, build.queue_seq)?,
        };
        let Some(entry) = self.builds.get_mut(&seq) else {
            return Err(StoreError::Corrupt(format!("build {id} lost its entry")));
        };
        let (number, priority) = build
            .build
            .as_ref()
            .map_or((0, 0), |b| (b.build_number, b.priority));
        entry.version = build.version;
        entry.placement = placement;
        entry.rank = queue_rank(priority, build.queue_seq);
        entry.deadline_ms = build.queued_deadline_ms;
        entry.row = row;
        let counters = self.per_project.entry(entry.project.clone()).or_default();
        counters.last_number = counters.last_number.max(number);
        if let Some(token) = token {
            self.tokens.insert(token.into(), seq);
        }
        self.place(seq);
        Ok(())
    }

    fn insert_new(&mut self, id: &str, project: &str, seq: u64) -> StoreResult<u64> {
        if let Some(other) = self.builds.get(&seq) {
            return Err(StoreError::Corrupt(format!(
                "builds {} and {id} share queue_seq {seq}",
                other.id
            )));
        }
        let id: Arc<str> = id.into();
        // One shared copy of each project name.
        let project = match self.per_project.get_key_value(project) {
            Some((name, _)) => name.clone(),
            None => Arc::from(project),
        };
        self.per_project
            .entry(project.clone())
            .or_default()
            .index
            .insert(seq);
        self.ids.insert(id.clone(), seq);
        self.builds.insert(
            seq,
            Entry {
                id,
                project,
                version: 0,
                placement: Placement::Finished,
                rank: 0,
                deadline_ms: 0,
                row: Bytes::new(),
            },
        );
        self.last_seq = self.last_seq.max(seq);
        Ok(seq)
    }

    /// Adds (or with `add` false removes) build `seq` to the indexes its placement puts it in.
    fn index(&mut self, seq: u64, add: bool) {
        let Some(entry) = self.builds.get(&seq) else {
            return;
        };
        match entry.placement {
            Placement::Queued if add => {
                self.queue.insert(entry.rank, seq);
                self.deadlines.insert((entry.deadline_ms, seq));
            }
            Placement::Queued => {
                self.queue.remove(&entry.rank);
                self.deadlines.remove(&(entry.deadline_ms, seq));
            }
            Placement::Claimed => {
                let running = self.per_project.entry(entry.project.clone()).or_default();
                if add {
                    self.active.insert(seq);
                    running.running += 1;
                } else {
                    self.active.remove(&seq);
                    running.running = running.running.saturating_sub(1);
                }
            }
            Placement::Finished => {}
        }
    }

    fn place(&mut self, seq: u64) {
        self.index(seq, true);
    }

    fn unplace(&mut self, seq: u64) {
        self.index(seq, false);
    }

    fn decode(&self, seq: u64) -> StoreResult<StoredBuild> {
        decode_row(self.builds.get(&seq).map_or(&[][..], |e| &e.row))
    }

    pub(super) fn row(&self, id: &str) -> Option<Bytes> {
        let seq = self.ids.get(id)?;
        self.builds.get(seq).map(|e| e.row.clone())
    }

    pub(super) fn seq_of(&self, id: &str) -> Option<u64> {
        self.ids.get(id).copied()
    }

    /// Up to `n` builds (of `project`, or all) created before `before`, newest first.
    pub(super) fn index_page(
        &self,
        project: Option<&str>,
        before: Option<u64>,
        n: usize,
    ) -> Vec<(u64, Bytes)> {
        let end = before.unwrap_or(u64::MAX);
        let row = |seq: &u64| self.builds.get(seq).map(|e| (*seq, e.row.clone()));
        match project {
            None => self
                .builds
                .range(..end)
                .rev()
                .take(n)
                .map(|(seq, e)| (*seq, e.row.clone()))
                .collect(),
            Some(project) => self.per_project.get(project).map_or_else(Vec::new, |p| {
                p.index.range(..end).rev().take(n).filter_map(row).collect()
            }),
        }
    }

    fn ids_of<'a>(&'a self, seqs: impl Iterator<Item = &'a u64>) -> Vec<String> {
        seqs.filter_map(|seq| self.builds.get(seq))
            .map(|e| e.id.to_string())
            .collect()
    }

    pub(super) fn queue_head(&self, limit: usize) -> Vec<String> {
        self.ids_of(self.queue.values().take(limit))
    }

    pub(super) fn queue_len(&self) -> u64 {
        self.queue.len() as u64
    }

    pub(super) fn queue_expired(&self, now_ms: i64, limit: usize) -> Vec<String> {
        let due = self.deadlines.range(..=(now_ms, u64::MAX)).take(limit);
        self.ids_of(due.map(|(_, seq)| seq))
    }

    pub(super) fn active(&self) -> Vec<String> {
        self.ids_of(self.active.iter())
    }

    /// [`crate::store::StateStore::put_project`] with the project already encoded.
    pub(super) fn put_project(
        &mut self,
        name: String,
        row: Bytes,
        create_only: bool,
    ) -> (bool, Option<Record>) {
        let existed = self.projects.contains_key(&name);
        if create_only && existed {
            return (false, None);
        }
        self.projects.insert(name, row.clone());
        (create_only || existed, Some(Record::Project(row)))
    }

    pub(super) fn project(&self, name: &str) -> Option<Bytes> {
        self.projects.get(name).cloned()
    }

    pub(super) fn projects(&self) -> Vec<Bytes> {
        self.projects.values().cloned().collect()
    }

    pub(super) fn delete_project(&mut self, name: &str) -> (bool, Option<Record>) {
        match self.projects.remove(name) {
            Some(_) => (true, Some(Record::ProjectDeleted(name.to_owned()))),
            None => (false, None),
        }
    }

    /// [`crate::store::StateStore::put_cache`].
    pub(super) fn put_cache(
        &mut self,
        entry: CacheEntry,
        immutable: bool,
    ) -> (bool, Option<Record>) {
        let at = (entry.project.clone(), cache_slot(&entry));
        if immutable && self.caches.contains_key(&at) {
            return (false, None);
        }
        let row = Bytes::from(entry.encode_to_vec());
        self.caches.insert(at, row.clone());
        (true, Some(Record::Cache(row)))
    }

    pub(super) fn caches(&self, project: &str) -> Vec<Bytes> {
        let from = (project.to_owned(), String::new());
        self.caches
            .range(from..)
            .take_while(|((p, _), _)| p == project)
            .map(|(_, row)| row.clone())
            .collect()
    }

    /// [`crate::store::StateStore::touch_cache`]: the stored row, rewritten.
    pub(super) fn touch_cache(
        &mut self,
        project: &str,
        slot: &str,
        used_ms: i64,
    ) -> StoreResult<((), Option<Record>)> {
        let Some(row) = self.caches.get_mut(&(project.to_owned(), slot.to_owned())) else {
            return Ok(((), None));
        };
        let mut entry: CacheEntry = decode_row(row)?;
        entry.last_used_ms = entry.last_used_ms.max(used_ms);
        *row = Bytes::from(entry.encode_to_vec());
        Ok(((), Some(Record::Cache(row.clone()))))
    }

    pub(super) fn cache_projects(&self) -> Vec<String> {
        let mut projects: Vec<String> = self.caches.keys().map(|(p, _)| p.clone()).collect();
        projects.dedup();
        projects
    }

    /// [`crate::store::StateStore::delete_caches`]: the journal records the slots that went.
    pub(super) fn delete_caches(
        &mut self,
        project: &str,
        entries: &[CacheEntry],
    ) -> StoreResult<(u64, Option<Record>)> {
        let mut slots = Vec::new();
        for entry in entries {
            let slot = cache_slot(entry);
            let Some(row) = self.caches.get(&(project.to_owned(), slot.clone())) else {
                continue;
            };
            let stored: CacheEntry = decode_row(row)?;
            if stored.created_ms == entry.created_ms && stored.build_id == entry.build_id {
                slots.push(slot);
            }
        }
        let removed = self.remove_caches(project, &slots);
        let record = (removed > 0).then(|| Record::CachesDeleted {
            project: project.to_owned(),
            slots,
        });
        Ok((removed, record))
    }

    fn remove_caches(&mut self, project: &str, slots: &[String]) -> u64 {
        let mut removed = 0;
        for slot in slots {
            if self
                .caches
                .remove(&(project.to_owned(), slot.clone()))
                .is_some()
            {
                removed += 1;
            }
        }
        removed
    }

    /// Applies a journal record (replay).
    pub(super) fn apply(&mut self, record: Record) -> StoreResult<()> {
        match record {
            Record::Build {
                placement,
                token,
                row,
            } => {
                let build: StoredBuild = decode_row(&row)?;
                self.store_build(&build, row, placement, token.as_deref())
            }
            Record::Project(row) => {
                let project: Project = decode_row(&row)?;
                self.projects.insert(project.name, row);
                Ok(())
            }
            Record::ProjectDeleted(name) => {
                self.projects.remove(&name);
                Ok(())
            }
            Record::Cache(row) => {
                let entry: CacheEntry = decode_row(&row)?;
                self.caches
                    .insert((entry.project.clone(), cache_slot(&entry)), row);
                Ok(())
            }
            Record::CachesDeleted { project, slots } => {
                self.remove_caches(&project, &slots);
                Ok(())
            }
        }
    }

    /// The whole state as records (projects, caches, then builds oldest first, each with its token), for
    /// a compacted journal. Rows are shared, not copied, so this is cheap to take under the lock.
    pub(super) fn snapshot(&self) -> Vec<Record> {
        let mut tokens: HashMap<u64, &str> = HashMap::with_capacity(self.tokens.len());
        for (token, seq) in &self.tokens {
            tokens.insert(*seq, token);
        }
        let projects = self.projects.values().cloned().map(Record::Project);
        let caches = self.caches.values().cloned().map(Record::Cache);
        let builds = self.builds.iter().map(|(seq, e)| Record::Build {
            placement: e.placement,
            token: tokens.get(seq).map(|t| (*t).to_owned()),
            row: e.row.clone(),
        });
        projects.chain(caches).chain(builds).collect()
    }
}
