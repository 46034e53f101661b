//! The three versions of a node and the gate on the cluster version.
//!
//! * **binary**: [`crate::VERSION`];
//! * **storage format**: [`quorate_storage::FORMAT_VERSION`], stamped in the data directory;
//! * **cluster version**: committed through the log by `quorate cluster finalize`
//!   ([`quorate_api::CommandOp::SetClusterVersion`]), the lowest version every member supports.
//!   Behaviour an older binary cannot understand is gated on it ([`require`]); before finalize
//!   the cluster runs at [`quorate_api::CLUSTER_VERSION_INITIAL`] and any member may be rolled
//!   back to the previous release. A **new** cluster (bootstrapped by this binary) is raised to
//!   the newest version all its members support on its own ([`AutoFinalize`]). A node whose
//!   binary does not support the committed cluster
//!   version refuses to start ([`check_at_start`]) or stops when it applies the entry.

use crate::server::Shared;
use quorate_api::{ApiError, Response, VersionInfo};
use quorate_storage::RocksStore;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The applied cluster version, kept in memory. Read from the state machine at start; raised
/// by the apply thread once a batch that committed a new version is written, and after a
/// snapshot install or a repair. Never lowered: the cluster version never goes down, and a
/// state machine being installed (cleared, then filled in batches) reads as
/// [`quorate_api::CLUSTER_VERSION_INITIAL`] until the batch holding the version is written —
/// a reader of the state machine itself would see the version drop for that moment.
#[derive(Debug)]
pub(crate) struct AppliedClusterVersion(AtomicU32);

impl AppliedClusterVersion {
    /// Starts at `version` (the state machine's, at start).
    pub(crate) fn new(version: u32) -> AppliedClusterVersion {
        AppliedClusterVersion(AtomicU32::new(version))
    }

    /// The applied cluster version.
    pub(crate) fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// Raises it to `version` (no change if it is already there or above); returns the value.
    pub(crate) fn raise(&self, version: u32) -> u32 {
        self.0.fetch_max(version, Ordering::AcqRel).max(version)
    }

    /// Raises it to what the state machine in `store` records (after an install or a
    /// repair, on the apply thread: the state machine is whole again).
    pub(crate) fn refresh(&self, store: &(impl crate::sm::SmRead + ?Sized)) -> Result<u32, crate::sm::SmError> {
        Ok(self.raise(crate::sm::cluster_version(store)?))
    }
}

/// The committed cluster version as this node has applied it (from memory, see
/// [`AppliedClusterVersion`]).
pub(crate) fn cluster_version(shared: &Shared) -> u32 {
    shared.cluster_version.get()
}

/// The answer to `Request::Versions`.
pub(crate) fn info(shared: &Shared) -> Result<Response, ApiError> {
    info_of(shared.id, &shared.store, cluster_version(shared))
}

/// The answer to `Request::Versions` of node `id` with `store` at `cluster_version`.
pub(crate) fn info_of(id: quorate_log::NodeId, store: &RocksStore, cluster_version: u32) -> Result<Response, ApiError> {
    Ok(Response::Versions(VersionInfo {
        id,
        binary_version: crate::VERSION.to_string(),
        storage_format: store.format_version().map_err(|e| ApiError::Internal(format!("versions: {e}")))?,
        storage_format_max: quorate_storage::FORMAT_VERSION_FINALIZED,
        cluster_version,
        cluster_version_max: quorate_api::CLUSTER_VERSION,
    }))
}

/// Whether this (leader) node may propose raising the cluster version to `version`.
pub(crate) fn check_finalize(shared: &Shared, version: u32) -> Result<(), ApiError> {
    check_finalize_from(cluster_version(shared), version)
}

/// Whether a node at applied cluster version `current` may propose raising it to `version`.
pub(crate) fn check_finalize_from(current: u32, version: u32) -> Result<(), ApiError> {
    if version > quorate_api::CLUSTER_VERSION {
        return Err(ApiError::InvalidRequest(format!(
            "this node's binary ({}) supports cluster versions up to {}, not {version}",
            crate::VERSION,
            quorate_api::CLUSTER_VERSION
        )));
    }
    if version < current {
        return Err(ApiError::InvalidRequest(format!(
            "the cluster is already at cluster version {current}; it is never lowered"
        )));
    }
    Ok(())
}

/// The cluster version from which `member update` (`Request::MemberUpdate`) is served. The
/// command it proposes, `SetMemberAddr`, is 0.1.0's own, and a 0.1.0 replica applies it to a
/// member it has by recording the address and dialing it there; but a 0.1.0 node cannot
/// decode the request, and resolves a name once on its apply thread. So the feature waits
/// for finalize, like every behaviour 0.2.0 adds.
pub(crate) const MEMBER_UPDATE_CLUSTER_VERSION: u32 = 2;

/// The cluster version from which `snapshot save FILE` (`Request::SnapshotStreamOpen` and
/// `Request::SnapshotStreamFetch`) and bounded-staleness reads (`ReadConsistency::BoundedStale`)
/// are served: a 0.1.0 node cannot decode either request, so a client must not depend on them
/// while a 0.1.0 node may still be a member (or be rolled back to). The client refuses them
/// itself on a `quorate/1` connection, with the same words.
pub(crate) const SNAPSHOT_STREAM_CLUSTER_VERSION: u32 = 2;
/// See [`SNAPSHOT_STREAM_CLUSTER_VERSION`].
pub(crate) const BOUNDED_STALENESS_CLUSTER_VERSION: u32 = 2;
/// The cluster version from which a leader sends snapshots as a resumable, acknowledged
/// transfer (`NodeMessage::SnapshotPiece`, answered with `NodeMessage::SnapshotAck`,
/// [`crate::transfer`]) instead of the unacknowledged stream of `NodeMessage::SnapshotChunk`:
/// a 0.1.0 node closes the stream on a kind it does not know. A follower takes both at any
/// cluster version.
pub(crate) const RESUMABLE_SNAPSHOT_CLUSTER_VERSION: u32 = 2;

/// Refuses a request that needs cluster version `needed` before the cluster is finalized at it.
pub(crate) fn require(shared: &Shared, needed: u32, what: &str) -> Result<(), ApiError> {
    let current = cluster_version(shared);
    if current < needed {
        return Err(quorate_api::cluster_version_refusal(what, needed, current));
    }
    Ok(())
}

/// Once the applied cluster version is 2 or more, the transport refuses new `quorate/1`
/// connections (binaries older than 0.2.0), inbound and dialled: an old binary cannot join.
pub(crate) fn sync_transport(shared: &Shared) {
    if cluster_version(shared) >= 2 {
        shared.transport.refuse_quorate_1();
    }
}

/// At start: refuses data whose committed cluster version this binary does not support, and
/// completes a finalize stamp that a crash interrupted.
pub(crate) fn check_at_start(store: &RocksStore) -> Result<u32, String> {
    let v = crate::sm::check_cluster_version(store).map_err(|e| e.to_string())?;
    sync_format(store).map_err(|e| e.to_string())?;
    Ok(v)
}

/// Stamps the store with [`quorate_storage::FORMAT_VERSION_FINALIZED`] once the applied
/// cluster version is 2 or more (after the batch that committed it, after a snapshot install,
/// at start): binaries older than 0.2.0 then refuse to open the data.
pub(crate) fn sync_format(store: &RocksStore) -> Result<(), crate::sm::SmError> {
    if crate::sm::cluster_version(store)? >= 2 {
        store.stamp_format(quorate_storage::FORMAT_VERSION_FINALIZED)?;
    }
    Ok(())
}

/// The file, in the data directory, in which a node that bootstrapped a **new** cluster
/// records the cluster version its binary supports ([`quorate_api::CLUSTER_VERSION`]).
///
/// A new cluster starts at the newest cluster version every initial member supports, without
/// `quorate cluster finalize`: only an upgraded cluster — data written by an older binary, so
/// no marker — keeps the rollback window that ends with an explicit finalize.
pub(crate) const BOOTSTRAP_MARKER: &str = "bootstrap-cluster-version";

/// Largest marker file accepted.
const BOOTSTRAP_MARKER_BYTES_MAX: u64 = 64;

/// Before the store is opened: a node that bootstraps a new cluster (not `join`, no store yet)
/// writes the marker durably; then the marker, if any, is read. Returns the cluster version a
/// new cluster may be raised to automatically (`None`: not a node that bootstrapped one).
pub(crate) fn bootstrap_marker(data_dir: &Path, store_dir: &Path, join: bool) -> Result<Option<u32>, String> {
    let path = data_dir.join(BOOTSTRAP_MARKER);
    if !join && !store_dir.exists() {
        let tmp = data_dir.join(format!("{BOOTSTRAP_MARKER}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, format!("{}\n", quorate_api::CLUSTER_VERSION).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    read_bootstrap_marker(&path)
}

fn read_bootstrap_marker(path: &Path) -> Result<Option<u32>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if meta.len() > BOOTSTRAP_MARKER_BYTES_MAX {
        return Err(format!("{} is {} bytes, not a cluster version", path.display(), meta.len()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} holds {:?}, not a cluster version", path.display(), text.trim()))?;
    if v < quorate_api::CLUSTER_VERSION_INITIAL {
        return Err(format!(
            "{} holds cluster version {v}, below {}",
            path.display(),
            quorate_api::CLUSTER_VERSION_INITIAL
        ));
    }
    // A marker written by a newer binary (then rolled back) asks for no more than this one supports.
    Ok(Some(v.min(quorate_api::CLUSTER_VERSION)))
}

/// Raises a new cluster's version on its own once it is safe: the leader of a cluster this node
/// bootstrapped proposes `SetClusterVersion` when the applied version is below the marker's and
/// every other member is connected over a protocol generation that vouches for it (generation
/// 2, `quorate/2`, is spoken only by binaries that support cluster version 2). The same apply-time
/// check as for `quorate cluster finalize` stops a member that cannot follow.
#[derive(Debug)]
pub(crate) struct AutoFinalize {
    target: Option<u32>,
    next_try: std::time::Instant,
}

/// Time between two automatic proposals while the version has not been applied.
const AUTO_FINALIZE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl AutoFinalize {
    pub(crate) fn new(target: Option<u32>, now: std::time::Instant) -> AutoFinalize {
        AutoFinalize { target, next_try: now }
    }

    /// The version to propose now, if any. `generation` gives the protocol generation of the
    /// connection to a member (`None`: not connected).
    pub(crate) fn due(
        &mut self,
        now: std::time::Instant,
        is_leader: bool,
        applied_version: u32,
        others: &[quorate_log::NodeId],
        generation: impl Fn(quorate_log::NodeId) -> Option<u8>,
    ) -> Option<u32> {
        let target = self.target?;
        if applied_version >= target {
            self.target = None;
            return None;
        }
        if !is_leader || now < self.next_try {
            return None;
        }
        // The lowest generation among the members vouches for the version they all support.
        let mut vouched = target;
        for &id in others {
            vouched = vouched.min(u32::from(generation(id)?));
        }
        if vouched <= applied_version {
            return None;
        }
        self.next_try = now + AUTO_FINALIZE_RETRY;
        Some(vouched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_log::NodeId;
    use std::time::{Duration, Instant};

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|&i| NodeId::new(i).unwrap()).collect()
    }

    #[test]
    fn a_new_cluster_is_raised_only_when_every_member_speaks_generation_2() {
        let t0 = Instant::now();
        let mut a = AutoFinalize::new(Some(2), t0);
        let others = ids(&[2, 3]);
        assert_eq!(a.due(t0, false, 1, &others, |_| Some(2)), None, "followers never propose");
        assert_eq!(a.due(t0, true, 1, &others, |id| (id.get() == 2).then_some(2)), None, "node 3 not connected");
        assert_eq!(a.due(t0, true, 1, &others, |id| Some(if id.get() == 3 { 1 } else { 2 })), None, "node 3 is 0.1.0");
        assert_eq!(a.due(t0, true, 1, &others, |_| Some(2)), Some(2));
        assert_eq!(a.due(t0 + Duration::from_secs(1), true, 1, &others, |_| Some(2)), None, "retried after a pause");
        assert_eq!(a.due(t0 + AUTO_FINALIZE_RETRY, true, 1, &others, |_| Some(2)), Some(2));
        assert_eq!(a.due(t0 + AUTO_FINALIZE_RETRY * 2, true, 2, &others, |_| Some(2)), None, "applied: done");
        assert_eq!(a.due(t0 + AUTO_FINALIZE_RETRY * 3, true, 1, &others, |_| Some(2)), None, "never again");
        let mut single = AutoFinalize::new(Some(2), t0);
        assert_eq!(single.due(t0, true, 1, &[], |_| None), Some(2), "a one-node cluster");
        let mut none = AutoFinalize::new(None, t0);
        assert_eq!(none.due(t0, true, 1, &others, |_| Some(2)), None, "an upgraded cluster waits for finalize");
    }

    #[test]
    fn the_marker_is_written_for_a_new_cluster_only_and_bad_markers_are_errors() {
        let dir = std::env::temp_dir().join(format!("quorate-marker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("store");
        assert_eq!(bootstrap_marker(&dir, &store, true).unwrap(), None, "a joining node writes none");
        std::fs::create_dir_all(&store).unwrap();
        assert_eq!(bootstrap_marker(&dir, &store, false).unwrap(), None, "existing data: no marker");
        std::fs::remove_dir_all(&store).unwrap();
        assert_eq!(bootstrap_marker(&dir, &store, false).unwrap(), Some(quorate_api::CLUSTER_VERSION));
        std::fs::create_dir_all(&store).unwrap();
        assert_eq!(bootstrap_marker(&dir, &store, false).unwrap(), Some(quorate_api::CLUSTER_VERSION), "kept");
        std::fs::write(dir.join(BOOTSTRAP_MARKER), "99\n").unwrap();
        assert_eq!(bootstrap_marker(&dir, &store, false).unwrap(), Some(quorate_api::CLUSTER_VERSION), "capped");
        for bad in ["", "two", "0", "-1", &"9".repeat(100)] {
            std::fs::write(dir.join(BOOTSTRAP_MARKER), bad).unwrap();
            assert!(bootstrap_marker(&dir, &store, false).is_err(), "{bad:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
