//! A distributed lock on a lease, with the creation revision of the holder's key as its
//! fencing token (see the [module](super) for the design and its guarantees).

use super::{RecipeError, Session, check_name, lost_now, wait_lost};
use crate::{Compare, CompareOp, CompareTarget, LeaseId, LeaseLost, Txn, TxnOp};
use std::time::Duration;
use tokio::sync::watch;

/// A lock named `NAME`: its participants' keys are `lock/NAME/<lease id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    prefix: Vec<u8>,
}

impl Lock {
    /// The lock `name` (1 to [`super::NAME_BYTES_MAX`] bytes, no `/`).
    pub fn new(name: &str) -> Result<Lock, RecipeError> {
        check_name(name)?;
        Ok(Lock { prefix: format!("lock/{name}/").into_bytes() })
    }

    /// The prefix of the participants' keys.
    #[must_use]
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Takes the lock for `session`: puts the session's key and waits, for at most `timeout`,
    /// until it is first in line (watching the key before it, no polling). On a timeout the
    /// key is deleted and the call fails with [`RecipeError::Timeout`]; if the session's lease
    /// is lost meanwhile, with [`RecipeError::LeaseLost`]. Dropping the future leaves the key
    /// in line until [`Session::close`] or the lease's end. Acquiring again with the same
    /// session (after an unknown outcome, say) keeps the same key and place in line.
    pub async fn acquire(&self, session: &Session, timeout: Duration) -> Result<LockGuard, RecipeError> {
        let (key, token) = session.queue_up(&self.prefix, b"", timeout).await?;
        Ok(LockGuard { key, token, lease: session.lease().id, lost: session.lost_receiver() })
    }
}

/// A held lock. It is not released on drop (there is no async drop): call
/// [`LockGuard::release`], or close the session.
#[derive(Debug)]
#[must_use = "a lock is held until released or until its session ends"]
pub struct LockGuard {
    key: Vec<u8>,
    token: u64,
    lease: LeaseId,
    lost: watch::Receiver<Option<LeaseLost>>,
}

impl LockGuard {
    /// The holder's key.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The fencing token: the revision that created the holder's key. A later holder's token
    /// is always larger; pass it with every protected write ([`super::Fence`]).
    #[must_use]
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lease the lock is held on.
    #[must_use]
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Why the session's lease was lost, if it was: from then on the lock may be someone
    /// else's.
    #[must_use]
    pub fn is_lost(&self) -> Option<LeaseLost> {
        lost_now(&self.lost)
    }

    /// Waits until the session's lease is lost (pending while it is kept alive). The report
    /// can come up to a TTL late; the fence, not this, is what keeps writes safe.
    pub async fn lost(&self) -> LeaseLost {
        wait_lost(self.lost.clone()).await
    }

    /// A transaction condition that holds only while this holder's key exists with its token
    /// (etcd's `IsOwner`): add it to a transaction on Quorate and the transaction's writes
    /// cannot land after the lock passed on.
    #[must_use]
    pub fn owner_compare(&self) -> Compare {
        Compare { key: self.key.clone(), target: CompareTarget::CreateRevision(self.token), op: CompareOp::Equal }
    }

    /// Releases the lock: deletes the holder's key if it still is this holder's (a key of
    /// the same name put later has another token). Whether it still held it.
    /// [`RecipeError::WrongSession`] if `session` is not the one the lock was acquired with.
    pub async fn release(self, session: &Session) -> Result<bool, RecipeError> {
        super::same_lease(self.lease, session)?;
        let txn = Txn {
            compare: vec![self.owner_compare()],
            success: vec![TxnOp::Delete { key: self.key.clone() }],
            failure: vec![],
        };
        Ok(session.client().txn(txn).await?.succeeded)
    }
}
