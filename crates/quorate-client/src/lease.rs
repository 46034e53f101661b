//! Leases: keys that are deleted when their lease is revoked or expires
//! ([`quorate_api::Request::LeaseGrant`] and the requests after it).
//!
//! The leader decides expiry: a lease not kept alive for its TTL (on the leader's clock) is
//! expired through the log, and every key attached to it is deleted at one revision. A
//! [`KeepAlive`] renews a lease every third of its TTL until it is dropped, and says when the
//! lease is lost.

use crate::{ApiError, Client, ClientError, Core, Link, unexpected};
use quorate_api::{LeaseInfo, Request, Response};
use std::time::Duration;
use tokio::sync::watch;

pub use quorate_api::{ByteKey, LeaseId};

/// A granted lease.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// Its TTL, ms.
    pub ttl_ms: u64,
}

impl Lease {
    /// A lease granted earlier, by its id and TTL (to keep it alive from another process).
    #[must_use]
    pub fn new(id: LeaseId, ttl_ms: u64) -> Lease {
        Lease { id, ttl_ms }
    }
}

/// Why a [`KeepAlive`] stopped renewing its lease.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum LeaseLost {
    /// The leader no longer knows the lease (revoked, or expired).
    Gone(String),
    /// No keep-alive was acknowledged for a whole TTL: the lease may have expired.
    Unconfirmed {
        /// The last error.
        last_error: String,
    },
    /// Its owner stopped the keep-alive (`recipes::Session::stop_keep_alive`, or the handle
    /// was dropped): the lease expires after its TTL.
    Stopped,
}

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseLost::Gone(why) => write!(f, "the lease is gone: {why}"),
            LeaseLost::Unconfirmed { last_error } => {
                write!(f, "no keep-alive was acknowledged for a whole TTL (last error: {last_error})")
            }
            LeaseLost::Stopped => write!(f, "the keep-alive was stopped; the lease expires after its TTL"),
        }
    }
}

/// Renews a lease every third of its TTL until dropped (the task stops with it). Made by
/// [`Client::keep_alive`].
#[derive(Debug)]
pub struct KeepAlive {
    state: watch::Receiver<Option<LeaseLost>>,
    renewals: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// Waits until the lease is lost, and says why (pending forever while it is kept alive).
    pub async fn lost(&mut self) -> LeaseLost {
        loop {
            if let Some(l) = self.state.borrow_and_update().clone() {
                return l;
            }
            if self.state.changed().await.is_err() {
                return LeaseLost::Unconfirmed { last_error: "the keep-alive task stopped".into() };
            }
        }
    }

    /// Why the lease was lost, if it was.
    #[must_use]
    pub fn is_lost(&self) -> Option<LeaseLost> {
        self.state.borrow().clone()
    }

    /// A receiver of the verdict (`Some` once the lease is lost; closed once this handle is
    /// dropped), for the recipes that report a lost lease to a lock holder or a leader.
    pub(crate) fn lost_receiver(&self) -> watch::Receiver<Option<LeaseLost>> {
        self.state.clone()
    }

    /// Keep-alives acknowledged so far.
    #[must_use]
    pub fn renewals(&self) -> u64 {
        *self.renewals.borrow()
    }

    /// Waits until at least `n` keep-alives were acknowledged (or the lease is lost: `Err`).
    pub async fn wait_renewals(&mut self, n: u64) -> Result<(), LeaseLost> {
        loop {
            if *self.renewals.borrow_and_update() >= n {
                return Ok(());
            }
            if let Some(l) = self.is_lost() {
                return Err(l);
            }
            tokio::select! {
                r = self.renewals.changed() => if r.is_err() { return Err(self.lost().await) },
                l = self.state.changed() => if l.is_err() { return Err(self.lost().await) },
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<L: Link> Core<L> {
    /// In the client's session, like every write: a retry after a lost answer is applied once.
    pub(crate) async fn lease_grant(&self, ttl_ms: u64) -> Result<Lease, ClientError> {
        match self.write(Request::LeaseGrant { ttl_ms }).await? {
            (_, Response::LeaseGranted { id, ttl_ms }) => Ok(Lease { id, ttl_ms }),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    pub(crate) async fn lease_revoke(&self, id: LeaseId) -> Result<(u64, u64), ClientError> {
        match self.write(Request::LeaseRevoke { id }).await? {
            (_, Response::LeaseRevoked { deleted, revision }) => Ok((deleted, revision)),
            (node, other) => Err(unexpected(node, &other)),
        }
    }
}

impl Client {
    /// Grants a lease of `ttl_ms` owned by this client's principal (through the log, exactly
    /// once in this client's session). The
    /// TTL is at least `limits::LEASE_TTL_MS_MIN` and three of the cluster's election
    /// timeouts. Needs cluster version 2.
    pub async fn lease_grant(&self, ttl_ms: u64) -> Result<Lease, ClientError> {
        self.core.lease_grant(ttl_ms).await
    }

    /// Revokes a lease (its owner or an admin; exactly once in this client's session): every
    /// key attached to it is deleted at one revision. Returns the keys deleted and that revision.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<(u64, u64), ClientError> {
        self.core.lease_revoke(id).await
    }

    /// One keep-alive: the leader gives the lease its full TTL again. Returns that TTL, ms.
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<u64, ClientError> {
        match self.core.send(Request::LeaseKeepAlive { id }, None, crate::Route::Leader).await? {
            (_, Response::LeaseKeptAlive { ttl_ms, .. }) => Ok(ttl_ms),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// This client's principal's leases, with their remaining TTL on the leader's clock.
    pub async fn lease_list(&self) -> Result<Vec<LeaseInfo>, ClientError> {
        match self.core.send(Request::LeaseList, None, crate::Route::Leader).await? {
            (_, Response::Leases(l)) => Ok(l),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// One lease: its TTL, what remains of it, and (with `keys`) its attached keys.
    pub async fn lease_time_to_live(&self, id: LeaseId, keys: bool) -> Result<LeaseInfo, ClientError> {
        match self.core.send(Request::LeaseTimeToLive { id, keys }, None, crate::Route::Leader).await? {
            (_, Response::LeaseTtl(l)) => Ok(l),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Sets `key` to `value` attached to `lease` (exactly once, in this client's session); a
    /// later put without the lease detaches the key. Returns the revision of the write.
    pub async fn put_with_lease(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        lease: LeaseId,
    ) -> Result<u64, ClientError> {
        let body = Request::PutWithLease { key: key.as_ref().to_vec(), value: value.as_ref().to_vec(), lease };
        match self.core.write(body).await? {
            (_, Response::Put { revision }) => Ok(revision),
            (node, other) => Err(unexpected(node, &other)),
        }
    }

    /// Keeps `lease` alive from a task of its own (over this client's connections) every
    /// third of its TTL, until the handle is dropped. A renewal that fails is tried again
    /// every tenth of the TTL; the handle reports the lease lost when the leader says it is
    /// gone, or when no renewal was acknowledged for a whole TTL.
    #[must_use]
    pub fn keep_alive(&self, lease: Lease) -> KeepAlive {
        let client = self.session();
        let (state_tx, state) = watch::channel(None);
        let (renewals_tx, renewals) = watch::channel(0u64);
        let ttl = Duration::from_millis(lease.ttl_ms.max(3));
        let task = tokio::spawn(async move {
            let mut confirmed = tokio::time::Instant::now();
            let mut count = 0u64;
            loop {
                match client.lease_keep_alive(lease.id).await {
                    Ok(_) => {
                        confirmed = tokio::time::Instant::now();
                        count += 1;
                        renewals_tx.send_replace(count);
                        tokio::time::sleep(ttl / 3).await;
                    }
                    Err(e) => {
                        let gone = matches!(e.api_error(), Some(ApiError::InvalidRequest(_)));
                        if gone {
                            state_tx.send_replace(Some(LeaseLost::Gone(e.to_string())));
                            return;
                        }
                        if confirmed.elapsed() >= ttl {
                            state_tx.send_replace(Some(LeaseLost::Unconfirmed { last_error: e.to_string() }));
                            return;
                        }
                        tokio::time::sleep(ttl / 10).await;
                    }
                }
            }
        });
        KeepAlive { state, renewals, task }
    }
}
