//! The three versions of a node and the gate on the cluster version.
//!
//! * **binary**: [`crate::VERSION`];
//! * **storage format**: [`quorate_storage::FORMAT_VERSION`], stamped in the data directory;
//! * **cluster version**: committed through the log by `quorate cluster finalize`
//!   ([`quorate_api::CommandOp::SetClusterVersion`]), the lowest version every member supports.
//!   Behaviour an older binary cannot understand is gated on it ([`require`]); before finalize
//!   the cluster runs at [`quorate_api::CLUSTER_VERSION_INITIAL`] and any member may be rolled
//!   back to the previous release. A node whose binary does not support the committed cluster
//!   version refuses to start ([`check_at_start`]) or stops when it applies the entry.

use crate::server::Shared;
use quorate_api::{ApiError, Response, VersionInfo};
use quorate_storage::RocksStore;

/// The committed cluster version as this node has applied it.
pub(crate) fn cluster_version(shared: &Shared) -> u32 {
    crate::sm::cluster_version(&*shared.store).unwrap_or(quorate_api::CLUSTER_VERSION_INITIAL)
}

/// The answer to `Request::Versions`.
pub(crate) fn info(shared: &Shared) -> Result<Response, ApiError> {
    let cluster_version =
        crate::sm::cluster_version(&*shared.store).map_err(|e| ApiError::Internal(format!("versions: {e}")))?;
    Ok(Response::Versions(VersionInfo {
        id: shared.id,
        binary_version: crate::VERSION.to_string(),
        storage_format: shared.store.format_version().map_err(|e| ApiError::Internal(format!("versions: {e}")))?,
        storage_format_max: quorate_storage::FORMAT_VERSION_FINALIZED,
        cluster_version,
        cluster_version_max: quorate_api::CLUSTER_VERSION,
    }))
}

/// Whether this (leader) node may propose raising the cluster version to `version`.
pub(crate) fn check_finalize(shared: &Shared, version: u32) -> Result<(), ApiError> {
    if version > quorate_api::CLUSTER_VERSION {
        return Err(ApiError::InvalidRequest(format!(
            "this node's binary ({}) supports cluster versions up to {}, not {version}",
            crate::VERSION,
            quorate_api::CLUSTER_VERSION
        )));
    }
    let current = cluster_version(shared);
    if version < current {
        return Err(ApiError::InvalidRequest(format!(
            "the cluster is already at cluster version {current}; it is never lowered"
        )));
    }
    Ok(())
}

/// Refuses a request that needs cluster version `needed` before the cluster is finalized at it.
pub(crate) fn require(shared: &Shared, needed: u32, what: &str) -> Result<(), ApiError> {
    let current = cluster_version(shared);
    if current < needed {
        return Err(ApiError::InvalidRequest(format!(
            "{what} needs cluster version {needed}, the cluster is at {current}: upgrade every node, then run \
             `quorate cluster finalize`"
        )));
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
