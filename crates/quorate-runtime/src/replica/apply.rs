//! The state machine's side of a replica: [`Applier`] runs the [`Jobs`] the replica hands it,
//! in order, and answers with [`Reports`]. It owns the state machine, the exactly-once session
//! table and the applied index; the replica (the core's side) owns everything else. The two
//! share nothing but the jobs and reports that pass between them, so the applier may run in
//! the replica's own turn ([`Replica::process`], the default) or on a thread of its own
//! ([`Replica::detach_applier`], as [`crate::Node`] does): then a follower goes on
//! acknowledging appends while a large batch applies.

use super::{Applied, Pending, ReadCallback, Replica, Waiter};
use crate::driver::Core;
use crate::error::Error;
use crate::sessions::{ClientId, Command, SessionCheck, Sessions, read_image_prefix, write_image_prefix};
use crate::state_machine::{Committed, RuntimeWrites, StateMachine};
use crate::storage::{ImageReader, LogStorage, SnapshotSaver, SnapshotSource, content_reader};
use quorate_core::Instant;
use quorate_log::{Configuration, Entry, EntryId, EntryPayload, LogIndex, SnapshotMeta, Term};
use std::collections::{BTreeMap, BTreeSet};

/// Receives the index a snapshot taken on demand covers.
pub type SnapshotCallback = Box<dyn FnOnce(Result<LogIndex, Error>) + Send>;

/// One piece of work for the state machine's side, in the order the core handed it out.
pub(super) enum Job<SM: StateMachine> {
    /// Committed entries, with the proposers waiting for them (by index).
    Apply { entries: Vec<Entry>, bytes: u64, waiters: BTreeMap<LogIndex, (Term, Waiter<SM::Output>)> },
    /// A snapshot installed in storage: restore the state machine from it.
    Install { meta: SnapshotMeta, source: Box<dyn SnapshotSource> },
    /// The core asked for a snapshot at this point: taken if the state machine is exactly there.
    Snapshot(SnapshotMeta),
    /// A snapshot of the applied state now, asked for by the host.
    SnapshotNow(SnapshotCallback),
    /// A read to run once applied up to `index` (`LogIndex::ZERO`: at once).
    Read { index: LogIndex, id: u64, read: ReadCallback<SM> },
    /// The replica halted: fail everything held, do nothing more.
    Halt(String),
    /// The replica stops: fail everything held, do nothing more.
    Shutdown,
}

/// Work for the state machine's side of a replica, taken with [`Replica::take_jobs`] and
/// run, in the order taken, with [`Applier::run`].
#[must_use = "jobs hold waiting requests: run them"]
pub struct Jobs<SM: StateMachine>(pub(super) Vec<Job<SM>>);

impl<SM: StateMachine> Jobs<SM> {
    /// Whether there is nothing to run.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<SM: StateMachine> std::fmt::Debug for Jobs<SM> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("len", &self.0.len()).finish()
    }
}

/// What the state machine's side tells the core's side.
#[derive(Debug)]
pub(super) enum Report {
    /// Applied (or restored) up to `index`; `bytes` of committed entries and `waiters` of
    /// the proposers handed over with them are done with.
    Applied { index: LogIndex, bytes: u64, waiters: usize },
    /// A snapshot the core asked for, or one on demand, is stored.
    Taken(SnapshotMeta),
    /// The snapshot the core asked for was not taken.
    Skipped,
    /// The state machine's side halted.
    Halted(String),
}

/// What [`Applier::run`] did, for [`Replica::on_reports`] (in the order made).
#[derive(Debug, Default)]
#[must_use = "the replica needs every report"]
pub struct Reports(pub(super) Vec<Report>);

impl Reports {
    /// Whether there is nothing to report.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The state machine's side of a [`Replica`]: the state machine, the session table and the
/// applied index. Taken out of a replica with [`Replica::detach_applier`]; runs its jobs
/// with [`Applier::run`], wherever the host likes (one call at a time, in order).
pub struct Applier<SM: StateMachine> {
    sm: SM,
    sessions: Sessions,
    sessions_max: usize,
    applied: LogIndex,
    applied_term: Term,
    applied_config: Configuration,
    /// Reads waiting until applied ≥ their index.
    reads: BTreeMap<(LogIndex, u64), ReadCallback<SM>>,
    saver: Box<dyn SnapshotSaver>,
    halted: Option<String>,
    /// Durable state machines: the sessions changed since the last commit.
    sessions_dirty: BTreeSet<ClientId>,
    /// Durable state machines: the applied index of the last commit (the log is never
    /// compacted past it: snapshots are taken only at or below it).
    durable_applied: LogIndex,
    reports: Vec<Report>,
    /// The proposers of the entries this job applied and their outcomes (`None`: another
    /// entry took the index), answered once the job's commit is written.
    answers: Vec<Answer<SM::Output>>,
}

impl<SM: StateMachine> std::fmt::Debug for Applier<SM> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").field("applied", &self.applied).field("halted", &self.halted).finish_non_exhaustive()
    }
}

/// Where a starting replica's state machine stands.
pub(super) struct Start {
    pub(super) sessions: Sessions,
    pub(super) applied: LogIndex,
    pub(super) applied_term: Term,
    pub(super) applied_config: Configuration,
}

impl<SM: StateMachine> Applier<SM> {
    pub(super) fn new(sm: SM, start: Start, sessions_max: usize, saver: Box<dyn SnapshotSaver>) -> Applier<SM> {
        Applier {
            sm,
            sessions: start.sessions,
            sessions_max,
            applied: start.applied,
            applied_term: start.applied_term,
            applied_config: start.applied_config,
            reads: BTreeMap::new(),
            saver,
            halted: None,
            sessions_dirty: BTreeSet::new(),
            durable_applied: start.applied,
            reports: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// The state machine (as applied so far).
    #[must_use]
    pub fn state_machine(&self) -> &SM {
        &self.sm
    }

    #[cfg(test)]
    pub(super) fn state_machine_mut(&mut self) -> &mut SM {
        &mut self.sm
    }

    /// The index applied to the state machine.
    #[must_use]
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// Why this side halted, if it did.
    #[must_use]
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// Gives the state machine back (nothing may be waiting: run the jobs of the replica's
    /// shutdown first).
    #[must_use]
    pub fn into_state_machine(self) -> SM {
        self.sm
    }

    /// Runs `jobs`, in order, and returns what the replica must hear
    /// ([`Replica::on_reports`]). Proposers' outcomes and reads are answered from here.
    pub fn run(&mut self, jobs: Jobs<SM>) -> Reports {
        for job in jobs.0 {
            self.run_one(job);
        }
        self.serve_reads();
        Reports(std::mem::take(&mut self.reports))
    }

    fn run_one(&mut self, job: Job<SM>) {
        if let Some(why) = &self.halted {
            return refuse(job, &Error::Halted(why.clone()));
        }
        match job {
            Job::Apply { entries, bytes, mut waiters } => {
                let handed = waiters.len();
                self.apply(&entries, &mut waiters);
                self.answer();
                // Entries at or below the applied index (a restore passed them): their
                // proposers cannot learn whether they were applied.
                for (_, (_, w)) in waiters {
                    w.fail(Error::OutcomeUnknown);
                }
                self.reports.push(Report::Applied { index: self.applied, bytes, waiters: handed });
            }
            Job::Install { meta, source } => self.restore(&meta, source.as_ref()),
            Job::Snapshot(meta) => {
                let taken = meta.last.index == self.applied && self.take_snapshot(&meta).is_ok();
                self.reports.push(if taken { Report::Taken(meta) } else { Report::Skipped });
            }
            Job::SnapshotNow(done) => done(self.snapshot_now()),
            Job::Read { index, id, read } => {
                self.reads.insert((index, id), read);
            }
            Job::Halt(why) => self.halt_quietly(why),
            Job::Shutdown => {
                self.fail_held(&Error::Shutdown);
                self.halted = Some("shut down".into());
            }
        }
    }

    fn snapshot_now(&mut self) -> Result<LogIndex, Error> {
        let stored = self.saver.latest()?;
        if self.applied <= stored {
            return Ok(stored);
        }
        let meta =
            SnapshotMeta { last: EntryId::new(self.applied_term, self.applied), config: self.applied_config.clone() };
        self.take_snapshot(&meta)?;
        self.reports.push(Report::Taken(meta));
        Ok(self.applied)
    }

    fn take_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), Error> {
        // A durable state machine's log is never compacted past its last durable commit.
        if SM::DURABLE && meta.last.index > self.durable_applied {
            return Err(Error::Storage(quorate_log::StorageError::Io(format!(
                "a snapshot at {} is ahead of the state machine's durable {}",
                meta.last.index, self.durable_applied
            ))));
        }
        // The saver refuses an index at or below the stored snapshot's (an install's, say).
        let (sessions, sm) = (&self.sessions, &self.sm);
        self.saver.save(meta, &mut |out| {
            // A state machine that owns its format owns its image too: its bytes alone.
            if SM::ENVELOPE {
                write_image_prefix(out, sessions)?;
            }
            sm.snapshot(out)
        })?;
        Ok(())
    }

    fn restore(&mut self, meta: &SnapshotMeta, source: &dyn SnapshotSource) {
        match restore_image(&mut self.sm, source) {
            Ok(sessions) => self.sessions = sessions,
            Err(e) => return self.halt(format!("snapshot at {}: {e}", meta.last.index)),
        }
        self.sessions_dirty.clear();
        self.durable_applied = meta.last.index;
        self.applied = meta.last.index;
        self.applied_term = meta.last.term;
        self.applied_config = meta.config.clone();
        self.reports.push(Report::Applied { index: self.applied, bytes: 0, waiters: 0 });
    }

    /// Fails every read held here with `e` (proposers are held only inside the job being
    /// run, and answered by it).
    fn fail_held(&mut self, e: &Error) {
        for (_, r) in std::mem::take(&mut self.reads) {
            r(Err(e.clone()));
        }
    }

    /// Halts on an order of the replica (which knows already).
    fn halt_quietly(&mut self, why: String) {
        if self.halted.is_none() {
            self.fail_held(&Error::Halted(why.clone()));
            self.halted = Some(why);
        }
    }

    /// Halts on a failure of its own, and tells the replica.
    fn halt(&mut self, why: String) {
        if self.halted.is_none() {
            self.reports.push(Report::Halted(why.clone()));
            self.halt_quietly(why);
        }
    }

    /// Durable state machines: makes what was applied since the last commit durable, with
    /// the runtime's records, at the applied index.
    fn commit(&mut self) {
        if !SM::DURABLE || self.halted.is_some() || self.applied <= self.durable_applied {
            return;
        }
        let mut writes = RuntimeWrites::default();
        for id in std::mem::take(&mut self.sessions_dirty) {
            match self.sessions.record_of(id) {
                Some(r) => writes.put.push((id.0, r)),
                None => writes.delete.push(id.0),
            }
        }
        if let Err(e) = self.sm.commit(self.applied, &writes) {
            return self.halt(format!("the state machine's commit at {}: {e}", self.applied));
        }
        self.durable_applied = self.applied;
        // Everything queued so far is written.
        self.answer();
    }

    /// Answers the proposers of what was applied — for a durable state machine once a commit
    /// wrote it (called after each commit, and at the end of each job), so its answer follows
    /// its state being written and what its commit tells its host (a lease's clock, say) is
    /// known before the proposer hears; in memory, after each `apply` call. Halted (a failed
    /// apply or commit): their outcome is unknown — but for those whose index another entry
    /// took (`Dropped`: certain).
    fn answer(&mut self) {
        let halted = self.halted.is_some();
        for (w, outcome) in std::mem::take(&mut self.answers) {
            match outcome {
                None => w.fail(Error::Dropped),
                Some(_) if halted => w.fail(Error::OutcomeUnknown),
                Some(a) => w.complete(a),
            }
        }
    }

    fn serve_reads(&mut self) {
        while let Some(entry) = self.reads.first_entry() {
            if entry.key().0 > self.applied || self.halted.is_some() {
                break;
            }
            let f = entry.remove();
            f(Ok(&self.sm));
        }
    }

    fn apply(&mut self, entries: &[Entry], waiters: &mut BTreeMap<LogIndex, (Term, Waiter<SM::Output>)>) {
        let mut batch: Vec<Pending> = Vec::new();
        let mut touched: BTreeSet<ClientId> = BTreeSet::new();
        let mut last: Option<EntryId> = None;
        for e in entries {
            if self.halted.is_some() {
                return;
            }
            if e.index <= self.applied {
                continue;
            }
            self.sm.observe_entry(e);
            match &e.payload {
                // The state machine's own format: every command entry, as it is.
                EntryPayload::Command(data) if !SM::ENVELOPE => {
                    batch.push(Pending { index: e.index, term: e.term, command: data.to_vec(), session: None });
                }
                EntryPayload::Command(data) => match Command::decode(data) {
                    Some(Command::Plain(command)) => {
                        batch.push(Pending { index: e.index, term: e.term, command, session: None });
                    }
                    Some(Command::Session { client, seq, command }) => {
                        if touched.contains(&client) {
                            self.flush(&mut batch, &mut touched, waiters);
                        }
                        match self.sessions.check(client, seq) {
                            SessionCheck::Apply => {
                                touched.insert(client);
                                batch.push(Pending {
                                    index: e.index,
                                    term: e.term,
                                    command,
                                    session: Some((client, seq)),
                                });
                            }
                            SessionCheck::Cached(out) => {
                                let outcome = match postcard::from_bytes(&out) {
                                    Ok(o) => Applied::Output(o),
                                    Err(_) => Applied::Failed(Error::Undecodable),
                                };
                                resolve(&mut self.answers, waiters, e.index, e.term, outcome);
                            }
                            SessionCheck::Stale => {
                                resolve(
                                    &mut self.answers,
                                    waiters,
                                    e.index,
                                    e.term,
                                    Applied::Failed(Error::StaleSequence),
                                );
                            }
                            SessionCheck::Expired => {
                                resolve(
                                    &mut self.answers,
                                    waiters,
                                    e.index,
                                    e.term,
                                    Applied::Failed(Error::SessionExpired),
                                );
                            }
                        }
                    }
                    Some(Command::OpenSession) => {
                        self.flush(&mut batch, &mut touched, waiters);
                        let (id, evicted) = self.sessions.open(e.index, self.sessions_max);
                        if SM::DURABLE {
                            self.sessions_dirty.insert(id);
                            self.sessions_dirty.extend(evicted);
                        }
                        resolve(&mut self.answers, waiters, e.index, e.term, Applied::Session(id));
                    }
                    None => resolve(&mut self.answers, waiters, e.index, e.term, Applied::Failed(Error::Undecodable)),
                },
                EntryPayload::Config(c) => {
                    self.applied_config = c.clone();
                    resolve(&mut self.answers, waiters, e.index, e.term, Applied::Other);
                }
                // A no-op, or a payload of a later version: nothing for the state machine.
                _ => resolve(&mut self.answers, waiters, e.index, e.term, Applied::Other),
            }
            last = Some(e.id());
        }
        self.flush(&mut batch, &mut touched, waiters);
        if let Some(last) = last
            && self.halted.is_none()
        {
            self.applied = last.index;
            self.applied_term = last.term;
        }
        self.commit();
        self.serve_reads();
    }

    /// Applies the batch of commands collected so far; `applied` moves to its last entry.
    fn flush(
        &mut self,
        batch: &mut Vec<Pending>,
        touched: &mut BTreeSet<ClientId>,
        waiters: &mut BTreeMap<LogIndex, (Term, Waiter<SM::Output>)>,
    ) {
        touched.clear();
        if batch.is_empty() || self.halted.is_some() {
            batch.clear();
            return;
        }
        let items = std::mem::take(batch);
        for part in items.chunks(SM::APPLY_COMMANDS_MAX.max(1)) {
            let committed: Vec<Committed<'_>> =
                part.iter().map(|p| Committed { index: p.index, command: &p.command }).collect();
            let outputs = self.sm.apply(&committed);
            if let Some(why) = self.sm.failure() {
                return self.halt(format!("the state machine failed applying up to {}: {why}", committed[0].index));
            }
            if outputs.len() != part.len() {
                return self.halt(format!(
                    "the state machine returned {} outputs for {} commands",
                    outputs.len(),
                    part.len()
                ));
            }
            for (p, out) in part.iter().zip(outputs) {
                if let Some((client, seq)) = p.session {
                    let encoded = postcard::to_allocvec(&out).unwrap_or_default();
                    self.sessions.record(client, seq, p.index, encoded);
                    if SM::DURABLE {
                        self.sessions_dirty.insert(client);
                    }
                }
                self.applied = p.index;
                self.applied_term = p.term;
                resolve(&mut self.answers, waiters, p.index, p.term, Applied::Output(out));
            }
            if SM::DURABLE && self.sm.commit_due() {
                self.commit();
            }
            if !SM::DURABLE {
                self.answer();
            }
        }
    }
}

/// A proposer and its entry's outcome (`None`: another entry took its index).
type Answer<O> = (Waiter<O>, Option<Applied<O>>);

/// Queues the answer to the proposer of the entry at `index` (if it is still waiting): its
/// outcome if the entry is the one it proposed (same term), [`Error::Dropped`] otherwise.
fn resolve<O>(
    answers: &mut Vec<Answer<O>>,
    waiters: &mut BTreeMap<LogIndex, (Term, Waiter<O>)>,
    index: LogIndex,
    term: Term,
    outcome: Applied<O>,
) {
    if let Some((t, w)) = waiters.remove(&index) {
        answers.push((w, (t == term).then_some(outcome)));
    }
}

/// Answers a job that cannot run (the side halted or stopped) with `e`.
pub(super) fn refuse<SM: StateMachine>(job: Job<SM>, e: &Error) {
    match job {
        Job::Apply { waiters, .. } => {
            for (_, (_, w)) in waiters {
                w.fail(Error::OutcomeUnknown);
            }
        }
        Job::SnapshotNow(done) => done(Err(e.clone())),
        Job::Read { read, .. } => read(Err(e.clone())),
        Job::Install { .. } | Job::Snapshot(_) | Job::Halt(_) | Job::Shutdown => {}
    }
}

/// Restores `sm` from the image `source` holds: the runtime's part (the session table, which
/// is returned; none when the state machine owns its format), then the state machine's bytes
/// as a stream, then the whole image's checksum. A durable state machine's restore is
/// finished by its commit, with the session table as its runtime records.
pub(super) fn restore_image<SM: StateMachine>(sm: &mut SM, source: &dyn SnapshotSource) -> Result<Sessions, String> {
    let at = source.header().meta.last.index;
    let content = source.content();
    let mut reader = ImageReader::new(source);
    let mut body = content_reader(&mut reader, &content).map_err(|e| e.to_string())?;
    let len = content.end.saturating_sub(content.start);
    let sessions = if SM::ENVELOPE { read_image_prefix(&mut body, len)? } else { Sessions::default() };
    sm.restore(at, &mut body).map_err(|e| e.to_string())?;
    // What `restore` left unread, and any framing after it: read, and the whole image
    // checked.
    reader.finish().map_err(|e| e.to_string())?;
    if SM::DURABLE {
        let writes = RuntimeWrites { clear: true, put: sessions.records(), delete: Vec::new() };
        sm.commit(at, &writes).map_err(|e| format!("the state machine's commit of the restore: {e}"))?;
    }
    Ok(sessions)
}

impl<SM: StateMachine, L: LogStorage, C: Core<L>> Replica<SM, L, C> {
    /// Hears what the state machine's side did: moves the applied index (reported by
    /// [`Replica::status`]), releases the apply backlog, hands taken snapshots to the core
    /// (which compacts the log behind them) and halts if that side halted. For a replica
    /// whose applier was detached ([`Replica::detach_applier`]); call
    /// [`Replica::process`] after.
    pub fn on_reports(&mut self, now: Instant, reports: Reports) {
        for r in reports.0 {
            match r {
                Report::Applied { index, bytes, waiters } => {
                    self.applied = index;
                    self.apply_in_flight = self.apply_in_flight.saturating_sub(bytes);
                    self.proposals_out = self.proposals_out.saturating_sub(waiters);
                }
                Report::Taken(meta) => {
                    // The image kept for sending is superseded (transfers hold their own).
                    self.send_cache = None;
                    self.core.snapshot_taken(now, meta);
                }
                Report::Skipped => self.core.snapshot_skipped(now),
                Report::Halted(why) => self.halt_here(why),
            }
        }
    }
}
