//! Leader election on leases: campaign, proclaim, observe, resign (see the [module](super)
//! for the design and its guarantees).

use super::{RecipeError, Session, check_name, escaped, lost_now, rank, wait_lost};
use crate::{ApiError, Client, Compare, CompareOp, CompareTarget, KeyValue, LeaseLost, ReadConsistency};
use crate::{Txn, TxnOp, Watch, WatchOptions};
use std::time::Duration;
use tokio::sync::watch;

/// An election named `NAME`: its candidates' keys are `election/NAME/<lease id>`, each holding
/// the candidate's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    prefix: Vec<u8>,
}

/// The leader of an election, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The leader's key.
    pub key: Vec<u8>,
    /// Its value (what it campaigned with, or proclaimed since).
    pub value: Vec<u8>,
    /// The revision that created its key: the leadership's fencing token.
    pub revision: u64,
}

impl From<KeyValue> for Leader {
    fn from(kv: KeyValue) -> Leader {
        Leader { key: kv.key, value: kv.value, revision: kv.create_revision }
    }
}

impl Election {
    /// The election `name` (1 to [`super::NAME_BYTES_MAX`] bytes, no `/`).
    pub fn new(name: &str) -> Result<Election, RecipeError> {
        check_name(name)?;
        Ok(Election { prefix: format!("election/{name}/").into_bytes() })
    }

    /// The prefix of the candidates' keys.
    #[must_use]
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Stands `session` as a candidate with `value` and waits, for at most `timeout`, until
    /// it is the leader (the candidate whose key was created first). As
    /// [`super::Lock::acquire`]: on a timeout the candidacy is withdrawn; a lost lease ends
    /// the wait; campaigning again with the same session keeps the place in line (and sets the
    /// value).
    pub async fn campaign(
        &self,
        session: &Session,
        value: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<Leadership, RecipeError> {
        let (key, revision) = session.queue_up(&self.prefix, value.as_ref(), timeout).await?;
        Ok(Leadership { key, revision, lease: session.lease().id, lost: session.lost_receiver() })
    }

    /// The current leader, if there is one (a linearizable read).
    pub async fn leader(&self, client: &Client) -> Result<Option<Leader>, RecipeError> {
        let (ranking, _) = rank(client, &self.prefix, 0, None).await?;
        Ok(ranking.first.map(Leader::from))
    }

    /// The leaders one after another ([`Observer::next`]), from the current one on, built on
    /// a watch of the prefix.
    #[must_use]
    pub fn observe<'c>(&self, client: &'c Client) -> Observer<'c> {
        Observer { client, prefix: self.prefix.clone(), watch: None, current: None, started: false }
    }
}

/// Leadership won by [`Election::campaign`]. Not given up on drop: call
/// [`Leadership::resign`], or close the session.
#[derive(Debug)]
#[must_use = "leadership is held until resigned or until its session ends"]
pub struct Leadership {
    key: Vec<u8>,
    revision: u64,
    lease: crate::LeaseId,
    lost: watch::Receiver<Option<LeaseLost>>,
}

impl Leadership {
    /// The leader's key.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The revision that created the leader's key: a fencing token, larger for every later
    /// leader.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Why the session's lease was lost, if it was: from then on another candidate may lead.
    #[must_use]
    pub fn is_lost(&self) -> Option<LeaseLost> {
        lost_now(&self.lost)
    }

    /// Waits until the session's lease is lost.
    pub async fn lost(&self) -> LeaseLost {
        wait_lost(self.lost.clone()).await
    }

    /// A transaction condition that holds only while this leader's key exists with its
    /// creation revision.
    #[must_use]
    pub fn owner_compare(&self) -> Compare {
        Compare { key: self.key.clone(), target: CompareTarget::CreateRevision(self.revision), op: CompareOp::Equal }
    }

    /// Sets the leader's value to `value`, only while it still leads: it checks that its key
    /// exists with its creation revision, puts the value with the session's lease (refused
    /// if the lease is gone), and checks again.
    ///
    /// Not one atomic step: a transaction cannot attach a lease to a put (a put without the
    /// lease would detach the key, which would then outlive the leader). If the key was deleted
    /// by someone else between the check and the put while the lease lived, the put creates
    /// it anew, at a later revision: the second check sees that, deletes that key and returns
    /// [`RecipeError::NotLeader`] — but observers may have seen the value under the new key
    /// meanwhile. An atomic proclaim needs a lease on a transaction's put (a wire change).
    ///
    /// [`RecipeError::WrongSession`] if `session` is not the one the leadership was won with.
    pub async fn proclaim(&self, session: &Session, value: impl AsRef<[u8]>) -> Result<(), RecipeError> {
        super::same_lease(self.lease, session)?;
        if let Some(why) = session.is_lost() {
            return Err(session.lost_error(why));
        }
        let client = session.client();
        self.still_held(client).await?;
        match client.put_with_lease(&self.key, value, session.lease().id).await {
            Ok(_) => {}
            Err(e) if matches!(e.api_error(), Some(ApiError::InvalidRequest(_))) => {
                return Err(RecipeError::NotLeader(format!("the lease is gone: {e}")));
            }
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = self.still_held(client).await {
            // Our put re-created a key deleted meanwhile: take it back out.
            let got = client.get(&self.key, ReadConsistency::Linearizable).await?;
            if let Some(kv) = got.kv.filter(|kv| kv.create_revision != self.revision) {
                let txn = Txn {
                    compare: vec![Compare {
                        key: self.key.clone(),
                        target: CompareTarget::CreateRevision(kv.create_revision),
                        op: CompareOp::Equal,
                    }],
                    success: vec![TxnOp::Delete { key: self.key.clone() }],
                    failure: vec![],
                };
                client.txn(txn).await?;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Gives up the leadership: deletes the leader's key if it still is this leader's.
    /// Whether it still led. [`RecipeError::WrongSession`] if `session` is not the one the
    /// leadership was won with.
    pub async fn resign(self, session: &Session) -> Result<bool, RecipeError> {
        super::same_lease(self.lease, session)?;
        let txn = Txn {
            compare: vec![self.owner_compare()],
            success: vec![TxnOp::Delete { key: self.key.clone() }],
            failure: vec![],
        };
        Ok(session.client().txn(txn).await?.succeeded)
    }

    async fn still_held(&self, client: &Client) -> Result<(), RecipeError> {
        let got = client.get(&self.key, ReadConsistency::Linearizable).await?;
        match got.kv {
            Some(kv) if kv.create_revision == self.revision => Ok(()),
            Some(kv) => Err(RecipeError::NotLeader(format!(
                "{} was created again at revision {} (ours: {})",
                escaped(&self.key),
                kv.create_revision,
                self.revision
            ))),
            None => Err(RecipeError::NotLeader(format!("{} is gone", escaped(&self.key)))),
        }
    }
}

/// The leaders of an election one after another ([`Election::observe`]).
#[derive(Debug)]
pub struct Observer<'c> {
    client: &'c Client,
    prefix: Vec<u8>,
    watch: Option<Watch<'c>>,
    current: Option<Leader>,
    started: bool,
}

impl Observer<'_> {
    /// The next leader: on the first call the current one; after that, waits for a change — a
    /// new leader, a new value, or no leader (`None`) — and returns it. Changes within one
    /// revision come as one; a change undone before the watch reads it is not seen. After the
    /// watch's position is compacted it reads the prefix anew (and goes on from there). After
    /// a failed watch poll the next call goes on from the same position; after a failed
    /// ranking (the read of the candidates once the watch showed a change) it reads the prefix
    /// anew at the current revision — the leader then, not one that led only in between is
    /// reported. Back off before calling again after an error: a ranking reads up to
    /// [`super::PARTICIPANTS_MAX`] keys.
    pub async fn next(&mut self) -> Result<Option<Leader>, RecipeError> {
        loop {
            let Some(watch) = self.watch.as_mut() else {
                let (ranking, at) = rank(self.client, &self.prefix, 0, None).await?;
                self.watch = Some(self.client.watch(WatchOptions::prefix(&self.prefix).from_revision(at + 1)));
                let leader = ranking.first.map(Leader::from);
                if !self.started || leader != self.current {
                    self.started = true;
                    self.current = leader.clone();
                    return Ok(leader);
                }
                continue;
            };
            let batch = match watch.next().await {
                Ok(b) => b,
                Err(e) if matches!(e.api_error(), Some(ApiError::Compacted { .. })) => {
                    self.watch = None;
                    continue;
                }
                // The watch does not move past a failed poll: the next call goes on from it.
                Err(e) => return Err(e.into()),
            };
            // Only a change of the leader's own key, or a first candidate, changes the leader:
            // a key created later is behind it in line.
            let relevant = match &self.current {
                None => !batch.events.is_empty(),
                Some(c) => batch.events.iter().any(|e| e.kv.key == c.key),
            };
            if !relevant {
                continue;
            }
            let ranking = match rank(self.client, &self.prefix, 0, Some(batch.complete_to)).await {
                Ok((r, _)) => r,
                Err(RecipeError::Client(e)) if matches!(e.api_error(), Some(ApiError::Compacted { .. })) => {
                    self.watch = None;
                    continue;
                }
                Err(e) => {
                    // The batch that held a change is consumed: the next call must rank anew,
                    // not wait for a further change (of a key that may be gone).
                    self.watch = None;
                    return Err(e);
                }
            };
            let leader = ranking.first.map(Leader::from);
            if leader != self.current {
                self.current = leader.clone();
                return Ok(leader);
            }
        }
    }
}
