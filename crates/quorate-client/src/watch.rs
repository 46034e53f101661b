//! Watches: a stream of the changes to a key or a prefix, pulled in long polls
//! ([`quorate_api::Request::Watch`]) from any member.
//!
//! Each answer says up to which revision it is complete; the next request asks from the
//! revision after it. The position is all the state there is, and it is the client's: after
//! a lost connection, an unreachable member or a leader change the watch asks the next
//! member from the same position and goes on without a gap or a duplicate (every member
//! applies the same log and keeps the same event index).

use crate::{ApiError, Client, ClientError, Core, Link, Route, unexpected};
use quorate_api::{Request, Response, WatchEvent, WatchRequest};
use quorate_log::NodeId;
use std::time::Duration;

pub use quorate_api::EventKind;

/// Consecutive failed polls (no member answered) before [`Watch::next`] returns the error.
pub const WATCH_FAILURES_MAX: u32 = 8;

/// What to watch, and how.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WatchOptions {
    /// The key, or the prefix.
    pub key: Vec<u8>,
    /// Whether `key` is a prefix (an empty prefix: every key).
    pub prefix: bool,
    /// The first revision wanted (0: from the serving member's next revision).
    pub from_revision: u64,
    /// Whether each event carries the version it replaced.
    pub prev_kv: bool,
    /// Most events per answer.
    pub max_events: u32,
    /// How long a poll waits for a change (capped below the client's request timeout).
    pub wait: Duration,
    /// The member asked first (`None`: any).
    pub node: Option<NodeId>,
}

impl WatchOptions {
    /// Watch one key, from the next revision, without previous values.
    #[must_use]
    pub fn key(key: impl AsRef<[u8]>) -> WatchOptions {
        WatchOptions {
            key: key.as_ref().to_vec(),
            prefix: false,
            from_revision: 0,
            prev_kv: false,
            max_events: 1000,
            wait: Duration::from_secs(2),
            node: None,
        }
    }

    /// Watch every key that starts with `prefix`.
    #[must_use]
    pub fn prefix(prefix: impl AsRef<[u8]>) -> WatchOptions {
        WatchOptions { prefix: true, ..WatchOptions::key(prefix) }
    }

    /// From `revision` on (its changes included).
    #[must_use]
    pub fn from_revision(mut self, revision: u64) -> WatchOptions {
        self.from_revision = revision;
        self
    }

    /// With the versions each change replaced.
    #[must_use]
    pub fn prev_kv(mut self, prev_kv: bool) -> WatchOptions {
        self.prev_kv = prev_kv;
        self
    }

    /// Asking `node` first.
    #[must_use]
    pub fn on(mut self, node: NodeId) -> WatchOptions {
        self.node = Some(node);
        self
    }
}

/// One answer of a watch: the events of a range of revisions (none: a progress notification).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchBatch {
    /// The events, in revision order; every event of a revision is in one batch.
    pub events: Vec<WatchEvent>,
    /// Every event up to this revision has been delivered.
    pub complete_to: u64,
    /// The member that answered.
    pub node: NodeId,
}

/// A watch in progress ([`Client::watch`]): call [`Watch::next`] for each batch.
#[derive(Debug)]
pub struct Watch<'c> {
    client: &'c Client,
    state: WatchState,
}

#[derive(Debug)]
pub(crate) struct WatchState {
    options: WatchOptions,
    /// The next revision to ask for (0: not known yet).
    next: u64,
    target: Option<NodeId>,
    failures: u32,
}

impl Client {
    /// Starts a watch (needs cluster version 2): nothing is sent until [`Watch::next`].
    #[must_use]
    pub fn watch(&self, options: WatchOptions) -> Watch<'_> {
        let target = options.node;
        let next = options.from_revision;
        Watch { client: self, state: WatchState { options, next, target, failures: 0 } }
    }
}

impl Watch<'_> {
    /// The next revision the watch asks for.
    #[must_use]
    pub fn next_revision(&self) -> u64 {
        self.state.next
    }

    /// The next batch: events, or a progress notification when nothing matched. Moves to
    /// another member when one cannot answer. Ends with an error when the position is
    /// compacted ([`ApiError::Compacted`]: read the state at its compaction revision and watch
    /// from the next one), when a request is refused, or after [`WATCH_FAILURES_MAX`] polls in
    /// a row that no member answered.
    pub async fn next(&mut self) -> Result<WatchBatch, ClientError> {
        self.client.core.watch_next(&mut self.state).await
    }
}

impl<L: Link> Core<L> {
    pub(crate) async fn watch_next(&self, s: &mut WatchState) -> Result<WatchBatch, ClientError> {
        loop {
            let target = match s.target {
                Some(t) => t,
                None => self.next_member(None),
            };
            if s.next == 0 {
                // From the member's next revision: its current one, plus one.
                match self.send(Request::Status, None, Route::Direct(target)).await {
                    Ok((_, Response::Status(st))) => s.next = st.revision.saturating_add(1),
                    Ok((node, other)) => return Err(unexpected(node, &other)),
                    Err(e) => {
                        self.watch_failed(s, target, e).await?;
                        continue;
                    }
                }
            }
            let wait = s.options.wait.min(self.config.request_timeout / 2);
            let body = Request::Watch(WatchRequest {
                key: s.options.key.clone(),
                prefix: s.options.prefix,
                from_revision: s.next,
                prev_kv: s.options.prev_kv,
                max_events: s.options.max_events.clamp(1, quorate_api::limits::WATCH_EVENTS_MAX as u32),
                max_bytes: 0,
                wait_ms: u32::try_from(wait.as_millis())
                    .unwrap_or(u32::MAX)
                    .min(quorate_api::limits::WATCH_WAIT_MS_MAX),
            });
            match self.send(body, None, Route::Direct(target)).await {
                Ok((node, Response::Watch(a))) => {
                    let in_range =
                        a.events.iter().all(|e| e.kv.mod_revision >= s.next && e.kv.mod_revision <= a.complete_to);
                    let ordered = a.events.windows(2).all(|p| p[0].kv.mod_revision <= p[1].kv.mod_revision);
                    if a.complete_to.saturating_add(1) < s.next || !in_range || !ordered {
                        return Err(ClientError::Unexpected {
                            node,
                            what: format!(
                                "a watch answer out of order (asked from {}, complete to {})",
                                s.next, a.complete_to
                            ),
                        });
                    }
                    s.target = Some(node);
                    s.failures = 0;
                    s.next = a.complete_to.saturating_add(1);
                    return Ok(WatchBatch { events: a.events, complete_to: a.complete_to, node });
                }
                Ok((node, other)) => return Err(unexpected(node, &other)),
                Err(e) => self.watch_failed(s, target, e).await?,
            }
        }
    }

    /// After a failed poll of `target`: the error if the watch cannot go on, else the next
    /// member to ask after a backoff.
    async fn watch_failed(&self, s: &mut WatchState, target: NodeId, e: ClientError) -> Result<(), ClientError> {
        if let ClientError::Rejected { error, .. } = &e
            && !matches!(
                error,
                ApiError::Unavailable(_) | ApiError::Shed(_) | ApiError::Overloaded { .. } | ApiError::Timeout
            )
        {
            return Err(e);
        }
        s.failures += 1;
        if s.failures > WATCH_FAILURES_MAX {
            return Err(e);
        }
        tracing::debug!(target: "quorate::client", node = %target, failures = s.failures, "watch poll failed, trying another member: {e}");
        s.target = Some(self.next_member(Some(target)));
        let delay = self.config.backoff.delay(s.failures - 1, self.random());
        tokio::time::sleep(delay).await;
        Ok(())
    }
}
