//! A core's state as data: [`CoreImage`], every field of a [`Raft`] except its storage, so
//! that a driver can checkpoint a running core and restore it later over a copy of the storage
//! it could read at that moment ([`Raft::from_image`]). The node's flight recorder writes one
//! at the start of every segment of its ring, and `quorate replay` starts from it.
//!
//! This module is a child of `raft` (it sees the core's private fields); `Raft<S>` implements
//! `Serialize` for any `S` (the storage is skipped), and the bytes of a serialized `Raft<S>`
//! decode as a [`CoreImage`]. A field added to `Raft` is part of the image automatically (the
//! derive) and must be carried in [`Raft::from_image`] (the compiler insists).

use super::Raft;
use crate::types::CoreError;
use quorate_log::LogStorage;
use serde::{Deserialize, Serialize};

/// The version of a [`CoreImage`]'s encoding (postcard bytes of every field of a [`Raft`]).
/// A reader of stored images (the node's flight recordings) must refuse an image of another
/// version: postcard is not self-describing, so old bytes may fail to decode or, worse, decode
/// into a different state. Bump it with any change to the fields of `Raft` or of a type inside
/// it (a test guards the bytes of a fixed core).
///
/// 1: quorate 0.1.0. 2: issue 16 (the role enum, the configuration log, the outbox, batch
/// marks, the install in flight). 3: issue 18 (bounded persist batches: two settings, and
/// held messages that wait for the batch handing out their entries; recovery from lost synced
/// state: the configuration's record, the recovery in progress, its unreported end).
pub const CORE_IMAGE_FORMAT: u32 = 3;

/// The storage of a [`CoreImage`]: none (a placeholder; the image is restored over real
/// storage with [`Raft::from_image`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Detached;

/// Storage types a `Raft` may be deserialized with: only [`Detached`] (sealed), so that a core
/// is never decoded over an empty default storage by mistake.
pub trait Detachable: Default + sealed::Sealed {}
impl Detachable for Detached {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Detached {}
}

/// Every field of a [`Raft`] except its storage: terms, votes, roles, timers, progress,
/// pending reads, held messages, the unstable log tail, the random generator's state and the
/// configuration. Decode it from the serialized bytes of [`Raft::image`] and restore it with
/// [`Raft::from_image`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CoreImage(Raft<Detached>);

impl CoreImage {
    /// The imaged core's node id.
    #[must_use]
    pub fn id(&self) -> quorate_log::NodeId {
        self.0.id
    }
}

/// A borrowed core that serializes exactly as a [`CoreImage`] (see [`Raft::image`]).
#[derive(Debug, Serialize)]
#[serde(transparent, bound = "")]
pub struct CoreImageRef<'a, S>(&'a Raft<S>);

impl<S> Raft<S> {
    /// This core's state without its storage, ready to serialize; decode the bytes as a
    /// [`CoreImage`].
    #[must_use]
    pub fn image(&self) -> CoreImageRef<'_, S> {
        CoreImageRef(self)
    }
}

impl<S: LogStorage> Raft<S> {
    /// Restores an imaged core over `storage`, which must hold what the core could read when
    /// it was imaged (the persisted log, hard state and snapshot; batches handed out but not
    /// yet reported persisted are written later, before they are reported, as usual). The
    /// restored core given the same inputs produces the same outputs as the original.
    pub fn from_image(image: CoreImage, storage: S) -> Result<Raft<S>, CoreError> {
        let r = image.0;
        r.cfg.validate()?;
        let persisted = r.log.persisted;
        if storage.last_index() < persisted && storage.snapshot_last().index < persisted {
            return Err(CoreError::Config(format!(
                "the storage ends at {} but the image says the log is persisted up to {persisted}",
                storage.last_index()
            )));
        }
        // Every field but the log moves across as it is; the field list is written once.
        macro_rules! restore {
            ($($field:ident),* $(,)?) => {{
                let Raft { log, $($field),* } = r;
                Raft { log: log.with_storage(storage), $($field),* }
            }};
        }
        let restored = restore!(
            cfg,
            id,
            term,
            vote,
            role,
            membership,
            snapshot,
            applied_since_snapshot,
            applied_bytes_since_snapshot,
            snapshot_requested,
            pending_install,
            pending_compact,
            send_snapshots,
            snapshot_wanted,
            rng,
            now,
            halted,
            election_deadline,
            last_leader_contact,
            last_campaign,
            outbox,
            reads_ready,
            reads_failed,
            io_issued,
            io_persisted,
            handed_hs,
            hs_io,
            recovery,
            recovered_unreported,
            danger,
        );
        restored.log.check();
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, Instant, IoId, Message, Persist, Raft, ReadId, ReadLevel, Role};
    use quorate_log::{Configuration, Data, MemLog, NodeId};
    use std::time::Duration;

    use super::CoreImage;

    /// The bytes of a fixed core's image, as a 64-bit FNV-1a digest. If this test fails, the
    /// encoding of `CoreImage` changed: bump `CORE_IMAGE_FORMAT` (stored images of the old
    /// encoding are then refused by version instead of misread) and record the new digest.
    #[test]
    fn the_image_encoding_is_the_one_core_image_format_names() {
        let id = NodeId::new(1).expect("non-zero");
        let conf = Configuration::with_voters([id]).expect("voters");
        let mut r = Raft::new(Config::new(id), MemLog::new(conf), Instant::ZERO).expect("valid");
        r.campaign_now(Instant::ZERO);
        let rd = r.ready();
        let bytes = postcard::to_allocvec(&r.image()).expect("encodes");
        let digest =
            bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
        assert_eq!(
            (super::CORE_IMAGE_FORMAT, digest, rd.persist.is_some()),
            (3, DIGEST, true),
            "the core image's bytes changed ({} bytes): bump CORE_IMAGE_FORMAT and record the new digest",
            bytes.len()
        );
    }

    const DIGEST: u64 = 15_006_696_079_823_148_368;

    fn write(s: &mut MemLog, p: &Persist) {
        if let Some(m) = p.install.clone().or(p.compact.clone()) {
            s.apply_snapshot(m);
        }
        if let Some(first) = p.entries.first() {
            s.truncate_from(first.index);
        }
        s.append(&p.entries).expect("contiguous");
        if let Some(hs) = p.hard_state {
            s.set_hard_state(hs);
        }
    }

    /// Three cores over in-memory logs; batches are persisted one step after they are handed
    /// out (so an image catches batches in flight). Node 1 may have a twin restored from its
    /// image that gets every input node 1 gets; their `Ready`s must be identical.
    struct Net {
        nodes: Vec<Raft<MemLog>>,
        twin: Option<Raft<MemLog>>,
        unpersisted: Vec<Vec<(IoId, Persist)>>,
        wire: Vec<Message>,
        now: Instant,
        compared: usize,
    }

    impl Net {
        fn new(seed: u64) -> Net {
            let ids: Vec<NodeId> = (1..=3).map(|i| NodeId::new(i).expect("non-zero")).collect();
            let conf = Configuration::with_voters(ids.clone()).expect("voters");
            let nodes = ids
                .iter()
                .map(|&id| {
                    let mut c = Config::new(id);
                    c.election_timeout_min = Duration::from_millis(100);
                    c.heartbeat_interval = Duration::from_millis(20);
                    c.seed = seed ^ id.get();
                    c.snapshot_entries_threshold = 1_000_000;
                    Raft::new(c, MemLog::new(conf.clone()), Instant::ZERO).expect("valid")
                })
                .collect();
            Net {
                nodes,
                twin: None,
                unpersisted: (0..3).map(|_| Vec::new()).collect(),
                wire: Vec::new(),
                now: Instant::ZERO,
                compared: 0,
            }
        }

        /// Applies `f` to node `i` and, for node 1, to its twin.
        fn input(&mut self, i: usize, f: impl Fn(&mut Raft<MemLog>)) {
            f(&mut self.nodes[i]);
            if i == 0
                && let Some(t) = &mut self.twin
            {
                f(t);
            }
        }

        fn step(&mut self, propose: bool) {
            self.now = self.now.saturating_add(Duration::from_millis(5));
            let now = self.now;
            for i in 0..3 {
                for (io, p) in std::mem::take(&mut self.unpersisted[i]) {
                    write(self.nodes[i].storage_mut(), &p);
                    if i == 0
                        && let Some(t) = &mut self.twin
                    {
                        write(t.storage_mut(), &p);
                    }
                    self.input(i, |r| r.persisted(now, io));
                }
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= now) {
                    self.input(i, |r| r.handle_timeout(now));
                }
                if propose && self.nodes[i].role() == Role::Leader {
                    self.input(i, |r| {
                        let _ = r.propose(now, Data::from("x"));
                        let _ = r.read(now, ReadId(now.0), ReadLevel::Linearizable);
                    });
                }
                for _ in 0..8 {
                    if !self.nodes[i].has_ready() {
                        break;
                    }
                    let rd = self.nodes[i].ready();
                    if i == 0
                        && let Some(t) = &mut self.twin
                    {
                        let trd = t.ready();
                        assert_eq!(format!("{trd:?}"), format!("{rd:?}"), "the restored core diverged");
                        self.compared += 1;
                    }
                    if let Some(p) = rd.persist {
                        self.unpersisted[i].push((p.io, p));
                    }
                    self.wire.extend(rd.messages);
                }
            }
            for m in std::mem::take(&mut self.wire) {
                let to = (m.to.get() - 1) as usize;
                // Drop a few messages (deterministically) so that retries and elections happen.
                if (now.0 / 1_000_000 + m.from.get()).is_multiple_of(17) {
                    continue;
                }
                self.input(to, |r| r.handle_message(now, m.clone()));
            }
        }
    }

    #[test]
    fn a_restored_image_produces_identical_readys() {
        let mut net = Net::new(3);
        for s in 0..300 {
            net.step(s % 2 == 0);
        }
        assert!(net.nodes.iter().any(|n| n.commit_index().0 > 20), "the cluster made progress");
        // Image node 1 mid-run, with batches in flight, and restore it over a copy of its storage.
        let bytes = postcard::to_allocvec(&net.nodes[0].image()).expect("encodes");
        let image: CoreImage = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(image.id(), net.nodes[0].id());
        let twin = Raft::from_image(image, net.nodes[0].storage().clone()).expect("restores");
        assert_eq!(twin.status(), net.nodes[0].status());
        assert_eq!(twin.poll_timeout(), net.nodes[0].poll_timeout());
        net.twin = Some(twin);
        // The same schedule goes on (lost messages, elections); the twin follows node 1.
        for s in 0..600 {
            net.step(s % 3 == 0);
        }
        assert!(net.compared > 100, "readies compared: {}", net.compared);
        let twin = net.twin.as_ref().expect("twin");
        assert_eq!(twin.status(), net.nodes[0].status());
        // Re-encoding the twin gives the original's image byte for byte.
        assert_eq!(postcard::to_allocvec(&twin.image()).ok(), postcard::to_allocvec(&net.nodes[0].image()).ok());
    }

    #[test]
    fn an_image_over_storage_that_lacks_the_persisted_log_is_refused() {
        let mut net = Net::new(5);
        for s in 0..200 {
            net.step(s % 2 == 0);
        }
        let bytes = postcard::to_allocvec(&net.nodes[0].image()).expect("encodes");
        let image: CoreImage = postcard::from_bytes(&bytes).expect("decodes");
        let conf = Configuration::with_voters((1..=3).map(|i| NodeId::new(i).expect("non-zero"))).expect("voters");
        let e = Raft::from_image(image, MemLog::new(conf)).expect_err("an empty log cannot hold the image's log");
        assert!(e.to_string().contains("persisted up to"), "{e}");
        // Garbage never decodes into an image without an error.
        assert!(postcard::from_bytes::<CoreImage>(&bytes[..bytes.len() / 2]).is_err());
    }
}
