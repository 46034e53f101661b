//! The retry, redirect and session logic against a scripted fake link, on paused time.

use super::*;
use quorate_api::ClientResponse;

type Script = dyn Fn(NodeId, &ClientRequest, usize) -> Result<Result<Response, ApiError>, LinkError> + Send + Sync;

/// Answers from a script; records every call.
struct FakeLink {
    script: Box<Script>,
    calls: Mutex<Vec<(NodeId, ClientRequest)>>,
    /// The address of every call.
    addrs: Mutex<Vec<SocketAddr>>,
    /// The attempt number of every call.
    attempts: Mutex<Vec<u32>>,
}

impl Link for FakeLink {
    async fn call(
        &self,
        node: NodeId,
        addr: SocketAddr,
        request: ClientRequest,
        attempt: u32,
    ) -> Result<ClientResponse, LinkError> {
        let n = {
            lock(&self.addrs).push(addr);
            let mut calls = lock(&self.calls);
            calls.push((node, request.clone()));
            lock(&self.attempts).push(attempt);
            calls.len() - 1
        };
        let result = (self.script)(node, &request, n)?;
        Ok(ClientResponse { id: request.id, result })
    }
    fn forget(&self, _node: NodeId) {}
    fn close(&self) {}
}

fn id(n: u64) -> NodeId {
    NodeId::new(n).unwrap()
}

fn core(
    script: impl Fn(NodeId, &ClientRequest, usize) -> Result<Result<Response, ApiError>, LinkError> + Send + Sync + 'static,
    tune: impl FnOnce(&mut ClientConfig),
) -> Core<FakeLink> {
    let members = (1..=3).map(|i| (id(i), SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)))).collect();
    let tls = TlsPaths { ca: "ca".into(), cert: "cert".into(), key: "key".into() };
    let mut config = ClientConfig::new(ClusterId::new("test").unwrap(), members, tls);
    config.seed = Some(1);
    tune(&mut config);
    Core::new(
        FakeLink {
            script: Box::new(script),
            calls: Mutex::new(Vec::new()),
            addrs: Mutex::new(Vec::new()),
            attempts: Mutex::new(Vec::new()),
        },
        config,
    )
}

fn calls(core: &Core<FakeLink>) -> Vec<(NodeId, ClientRequest)> {
    lock(&core.link.calls).clone()
}

/// A leader `leader` that opens session 42 and acknowledges puts; everyone else redirects.
fn leader_script(
    leader: u64,
) -> impl Fn(NodeId, &ClientRequest, usize) -> Result<Result<Response, ApiError>, LinkError> + Send + Sync + 'static {
    move |node, request, _| {
        if node != id(leader) {
            return Ok(Err(ApiError::NotLeader { leader: Some(id(leader)), addr: None }));
        }
        Ok(Ok(match request.body {
            Request::OpenSession => Response::Session(SessionId(42)),
            Request::Put { .. } => Response::Put { revision: request.session.map_or(0, |s| s.seq) },
            _ => Response::Done,
        }))
    }
}

fn put(key: &str) -> Request {
    Request::Put { key: key.into(), value: b"v".to_vec() }
}

#[tokio::test(start_paused = true)]
async fn follows_the_leader_hint_and_then_goes_straight_to_the_leader() {
    let core = core(leader_script(2), |_| ());
    let (node, answer) = core.write(put("a")).await.unwrap();
    assert_eq!((node, answer), (id(2), Response::Put { revision: 1 }));
    let before = calls(&core).len();
    assert!(before <= 3, "open session (maybe redirected) and one put: {before} calls");
    core.write(put("b")).await.unwrap();
    let after = calls(&core);
    assert_eq!(after.len(), before + 1, "the known leader is asked directly");
    assert_eq!(after.last().unwrap().0, id(2));
}

/// A hint's address is the leader's peer address; a configured member's address is never
/// replaced by it (a node not configured is reached at the hinted address).
#[tokio::test(start_paused = true)]
async fn a_hint_does_not_replace_a_configured_address() {
    let elsewhere: SocketAddr = "127.0.0.9:9999".parse().unwrap();
    let core = core(
        move |node, request, _| {
            if node != id(2) {
                return Ok(Err(ApiError::NotLeader { leader: Some(id(2)), addr: Some(elsewhere.to_string()) }));
            }
            leader_script(2)(node, request, 0)
        },
        |_| (),
    );
    core.write(put("a")).await.unwrap();
    let to_2: Vec<SocketAddr> = calls(&core)
        .iter()
        .zip(lock(&core.link.addrs).iter())
        .filter(|((n, _), _)| *n == id(2))
        .map(|(_, a)| *a)
        .collect();
    assert!(!to_2.is_empty(), "node 2 was asked");
    assert!(to_2.iter().all(|a| a.port() == 7002), "node 2 asked at its configured address: {to_2:?}");
    core.learn_addr(id(4), elsewhere);
    assert_eq!(core.addrs().get(&id(4)), Some(&elsewhere), "a node not configured is learned from hints");
}

#[tokio::test(start_paused = true)]
async fn with_no_leader_known_tries_every_member_in_turn() {
    let core = core(
        |node, request, _| {
            if node == id(3) {
                leader_script(3)(node, request, 0)
            } else {
                Ok(Err(ApiError::NotLeader { leader: None, addr: None }))
            }
        },
        |_| (),
    );
    let (node, _) = core.send(Request::MemberList, None, Route::Leader).await.unwrap();
    assert_eq!(node, id(3));
    let asked: Vec<NodeId> = calls(&core).iter().map(|c| c.0).collect();
    assert!(asked.len() <= 3, "each member at most once before the answer: {asked:?}");
}

/// The leader (node 1) dies after the first write; its followers keep naming it for 600 ms,
/// then node 3 is elected.
#[tokio::test(start_paused = true)]
async fn after_the_leader_dies_stale_hints_naming_it_are_not_followed() {
    let start = Instant::now();
    let dead_after = start + Duration::from_millis(1);
    let elected_at = start + Duration::from_millis(600);
    let core = core(
        move |node, request, _| {
            let now = Instant::now();
            if now < dead_after {
                return leader_script(1)(node, request, 0);
            }
            if node == id(1) {
                return Err(LinkError::Connect("no route".into()));
            }
            if now < elected_at {
                return Ok(Err(ApiError::NotLeader { leader: Some(id(1)), addr: None }));
            }
            leader_script(3)(node, request, 0)
        },
        |c| c.retries_max = 30,
    );
    core.write(put("a")).await.unwrap();
    assert_eq!(*lock(&core.leader), Some(id(1)));
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (node, _) = core.write(put("b")).await.unwrap();
    assert_eq!(node, id(3));
    let after: Vec<NodeId> = calls(&core).iter().filter(|c| c.1.body == put("b")).map(|c| c.0).collect();
    assert_eq!(after.iter().filter(|&&n| n == id(1)).count(), 1, "the dead leader is tried once: {after:?}");
    assert!(after.len() > 2, "the followers were asked until one was elected: {after:?}");
    // Elected at 600 ms; found within one backoff step (at most `Backoff::max`) of it.
    assert!(start.elapsed() <= Duration::from_millis(600) + Backoff::default().max, "{:?}", start.elapsed());
    // Once the suspicion has expired, hints naming node 1 are followed again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!core.is_suspect(id(1)));
}

#[tokio::test(start_paused = true)]
async fn a_node_that_answers_is_no_longer_suspect() {
    let core = core(leader_script(2), |_| ());
    core.suspect(id(2));
    assert!(core.is_suspect(id(2)));
    assert_ne!(core.next_member(None), id(2), "suspects are tried last");
    core.send(Request::Status, None, Route::Direct(id(2))).await.unwrap();
    assert!(!core.is_suspect(id(2)));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_a_lost_answer_reuses_the_session_and_sequence_number() {
    let core = core(
        |node, request, n| {
            // The first put's answer is lost (after the node may have applied it).
            if matches!(request.body, Request::Put { .. }) && n == 1 {
                return Err(LinkError::Lost("connection reset".into()));
            }
            leader_script(1)(node, request, n)
        },
        |c| c.members.truncate(1),
    );
    core.write(put("a")).await.unwrap();
    core.write(put("b")).await.unwrap();
    let puts: Vec<Sequenced> =
        calls(&core).iter().filter(|c| matches!(c.1.body, Request::Put { .. })).map(|c| c.1.session.unwrap()).collect();
    let s = SessionId(42);
    assert_eq!(
        puts,
        vec![Sequenced { session: s, seq: 1 }, Sequenced { session: s, seq: 1 }, Sequenced { session: s, seq: 2 }]
    );
    let opens = calls(&core).iter().filter(|c| c.1.body == Request::OpenSession).count();
    assert_eq!(opens, 1, "the session is opened once, lazily");
}

#[tokio::test(start_paused = true)]
async fn a_session_that_expired_before_the_write_is_replaced_once() {
    let core = core(
        |node, request, n| {
            if matches!(request.body, Request::Put { .. }) && request.session.unwrap().session == SessionId(42) {
                return Ok(Err(ApiError::SessionExpired));
            }
            if request.body == Request::OpenSession && n > 0 {
                return Ok(Ok(Response::Session(SessionId(43))));
            }
            leader_script(1)(node, request, n)
        },
        |c| c.members.truncate(1),
    );
    core.write(put("a")).await.unwrap();
    let last = calls(&core).pop().unwrap().1;
    assert_eq!(last.session, Some(Sequenced { session: SessionId(43), seq: 1 }));
}

#[tokio::test(start_paused = true)]
async fn overloaded_answers_delay_the_retry_by_at_least_the_hint() {
    let core = core(
        |node, request, n| {
            if n == 0 {
                return Ok(Err(ApiError::Overloaded { reason: "queue".into(), retry_after_ms: 700 }));
            }
            leader_script(1)(node, request, n)
        },
        |c| c.members.truncate(1),
    );
    let started = Instant::now();
    core.send(Request::MemberList, None, Route::Leader).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(700), "{:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_millis(800));
}

#[tokio::test(start_paused = true)]
async fn retries_are_bounded_by_count() {
    let core = core(
        |_, _, _| Err(LinkError::Connect("refused".into())),
        |c| {
            c.retries_max = 4;
            c.total_timeout = Duration::from_secs(3600);
        },
    );
    let error = core.send(Request::MemberList, None, Route::Leader).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { attempts: 5, reason: GiveUpReason::Retries, .. }), "{error}");
    assert_eq!(calls(&core).len(), 5);
    assert!(error.to_string().contains("cannot connect to node"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn retries_are_bounded_by_time() {
    let core = core(
        |_, _, _| Err(LinkError::Connect("refused".into())),
        |c| {
            c.retries_max = 1000;
            c.total_timeout = Duration::from_secs(2);
            c.backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(400) };
        },
    );
    let started = Instant::now();
    let error = core.send(Request::MemberList, None, Route::Leader).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { reason: GiveUpReason::Deadline, .. }), "{error}");
    assert!(started.elapsed() <= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_stops_a_retry_storm() {
    let core = core(
        |_, _, _| Err(LinkError::Connect("refused".into())),
        |c| c.retry_budget = RetryBudgetConfig { burst: 2, per_second: 0.0 },
    );
    let error = core.send(Request::MemberList, None, Route::Leader).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { attempts: 3, reason: GiveUpReason::Budget, .. }), "{error}");
    // The bucket is empty now: the next call makes one attempt and no retry.
    let error = core.send(Request::MemberList, None, Route::Leader).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { attempts: 1, reason: GiveUpReason::Budget, .. }), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_write_whose_answers_were_lost_reports_an_unknown_outcome() {
    let core = core(
        |node, request, n| {
            if matches!(request.body, Request::Put { .. }) {
                return Err(LinkError::Lost("reset".into()));
            }
            leader_script(1)(node, request, n)
        },
        |c| {
            c.members.truncate(1);
            c.retries_max = 2;
        },
    );
    let error = core.write(put("a")).await.unwrap_err();
    assert!(matches!(error, ClientError::OutcomeUnknown { attempts: 3, .. }), "{error}");
    assert!(error.to_string().contains("read the key"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn refusals_are_not_retried_and_name_the_node() {
    let core = core(|_, _, _| Ok(Err(ApiError::Unauthorized { needed: quorate_api::Access::Admin })), |_| ());
    let error = core.send(Request::SnapshotSave, None, Route::Leader).await.unwrap_err();
    assert_eq!(calls(&core).len(), 1);
    let text = error.to_string();
    assert!(text.starts_with("node ") && text.contains("certificate with that role"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn direct_requests_do_not_follow_redirects() {
    let core = core(leader_script(2), |_| ());
    let error = core.send(Request::Status, None, Route::Direct(id(1))).await.unwrap_err();
    assert!(matches!(error, ClientError::Rejected { node, error: ApiError::NotLeader { .. } } if node == id(1)));
    assert_eq!(calls(&core).iter().map(|c| c.0).collect::<Vec<_>>(), vec![id(1)]);
}

#[tokio::test(start_paused = true)]
async fn ping_pong_redirects_back_off_and_stay_bounded() {
    // Two nodes that each name the other as leader.
    let core = core(
        |node, _, _| {
            let other = if node == id(1) { 2 } else { 1 };
            Ok(Err(ApiError::NotLeader { leader: Some(id(other)), addr: Some(format!("127.0.0.1:700{other}")) }))
        },
        |c| {
            c.members.truncate(2);
            c.retries_max = 20;
        },
    );
    let error = core.send(Request::MemberList, None, Route::Leader).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { attempts: 21, .. }), "{error}");
}

#[test]
fn configurations_with_no_or_conflicting_endpoints_are_refused() {
    let tls = TlsPaths { ca: "ca".into(), cert: "cert".into(), key: "key".into() };
    let cluster = ClusterId::new("t").unwrap();
    let empty = ClientConfig::new(cluster.clone(), vec![], tls.clone());
    assert!(empty.validate().unwrap_err().to_string().contains("no endpoints"));
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let twice = ClientConfig::new(cluster, vec![(id(1), a), (id(1), b)], tls);
    assert!(twice.validate().unwrap_err().to_string().contains("two addresses"));
}

#[tokio::test(start_paused = true)]
async fn a_direct_request_to_a_down_node_costs_one_attempt() {
    let down = core(|_, _, _| Err(LinkError::Connect("refused".into())), |_| ());
    let error = down.send(Request::Status, None, Route::Direct(id(2))).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { attempts: 1, .. }), "{error}");
    // A lost answer (a stale connection) is retried once.
    let other = core(|_, _, _| Err(LinkError::Lost("reset".into())), |_| ());
    let error = other.send(Request::Status, None, Route::Direct(id(2))).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { attempts: 2, .. }), "{error}");
}

fn shed(reason: quorate_api::OverloadReason, retry_after_ms: u32) -> ApiError {
    ApiError::Shed(quorate_api::Overloaded { reason, retry_after_ms })
}

#[tokio::test(start_paused = true)]
async fn shed_answers_are_retried_no_sooner_than_the_hint() {
    let core = core(
        |node, request, n| {
            if n < 2 {
                return Ok(Err(shed(quorate_api::OverloadReason::ConcurrencyLimit, 700)));
            }
            leader_script(1)(node, request, n)
        },
        |c| c.members.truncate(1),
    );
    let started = Instant::now();
    core.send(Request::MemberList, None, Route::Leader).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400), "two hints of 700 ms: {waited:?}");
    assert!(waited <= Duration::from_millis(1540), "at most a tenth of jitter each: {waited:?}");
    assert_eq!(calls(&core).len(), 3);
    assert_eq!(*lock(&core.link.attempts), [0, 1, 2], "each retry carries its attempt number");
}

#[tokio::test(start_paused = true)]
async fn redirects_followed_at_once_are_not_retries() {
    let core = core(leader_script(3), |_| ());
    core.send(Request::MemberList, None, Route::Leader).await.unwrap();
    let attempts = lock(&core.link.attempts).clone();
    assert!(attempts.len() >= 2 || calls(&core)[0].0 == id(3), "{attempts:?}");
    assert!(attempts.iter().all(|a| *a == 0), "a redirect is not a retry: {attempts:?}");
}

#[tokio::test(start_paused = true)]
async fn shed_retries_spend_the_retry_budget() {
    let core = core(
        |_, _, _| Ok(Err(shed(quorate_api::OverloadReason::FairShare, 20))),
        |c| {
            c.members.truncate(1);
            c.retry_budget = RetryBudgetConfig { burst: 3, per_second: 0.0 };
        },
    );
    let error = core.send(Request::MemberList, None, Route::Leader).await.unwrap_err();
    assert!(matches!(error, ClientError::GaveUp { attempts: 4, reason: GiveUpReason::Budget, .. }), "{error}");
    assert!(error.to_string().contains("shed the request (fair share"), "{error}");
    assert_eq!(calls(&core).len(), 4, "a first attempt and three retries from the budget");
}

#[tokio::test(start_paused = true)]
async fn a_request_too_large_to_ever_be_admitted_is_not_retried() {
    let core = core(|_, _, _| Ok(Err(shed(quorate_api::OverloadReason::RequestTooLarge, 10_000))), |_| ());
    let started = Instant::now();
    let error = core.send(Request::MemberList, None, Route::Leader).await.unwrap_err();
    assert!(matches!(error, ClientError::Rejected { error: ApiError::Shed(_), .. }), "{error}");
    assert_eq!(calls(&core).len(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[test]
fn overload_delays_are_the_hint_plus_at_most_a_tenth() {
    let mut rng = SplitMix64::new(3);
    let floor = Duration::from_millis(250);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let d = overload_delay(floor, rng.next_u64());
        assert!(d >= floor && d <= floor + floor / 10, "{d:?}");
        seen.insert(d.as_millis());
    }
    assert!(seen.len() > 10, "jittered: {seen:?}");
    assert_eq!(overload_delay(Duration::ZERO, u64::MAX), Duration::ZERO);
}

fn kv(key: &[u8]) -> KeyValue {
    KeyValue { key: key.to_vec(), value: b"v".to_vec(), create_revision: 1, mod_revision: 1, version: 1 }
}

fn read_info(revision: u64) -> ReadInfo {
    ReadInfo { node: id(1), revision, applied: LogIndex(revision), staleness: None }
}

#[tokio::test(start_paused = true)]
async fn a_scan_follows_continuations_until_its_limit() {
    // Pages of two pairs, the range holding five.
    let core = core(
        |_, request, _| {
            let Request::ScanPaged { start, limit, .. } = &request.body else { return Ok(Ok(Response::Done)) };
            let keys: Vec<&[u8]> = [b"a", b"b", b"c", b"d", b"e"]
                .into_iter()
                .map(|k| k.as_slice())
                .filter(|k| *k >= start.as_slice())
                .collect();
            let take = keys.len().min(2).min(*limit as usize);
            let next = keys.get(take).map(|k| k.to_vec());
            Ok(Ok(Response::ScanPage { kvs: keys[..take].iter().map(|k| kv(k)).collect(), next, read: read_info(3) }))
        },
        |c| c.members.truncate(1),
    );
    let all = core.scan(b"", None, 100, ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), [b"a", b"b", b"c", b"d", b"e"]);
    assert!(!all.more);
    assert_eq!(calls(&core).len(), 3, "three pages");
    // A limit inside the range: the pairs asked for, and `more`.
    let three = core.scan(b"", None, 3, ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(three.kvs.len(), 3);
    assert!(three.more);
    // The second page asked for one pair only, from where the first ended.
    let last = calls(&core).pop().unwrap().1.body;
    assert!(matches!(last, Request::ScanPaged { ref start, limit: 1, .. } if start == b"c"), "{last:?}");
}

/// A node that answers every page of a scan at a revision with no pair and a continuation
/// that does not move (a bug or a hostile node) does not keep the client asking forever: the
/// scan fails at the first page that makes no progress, naming the node.
#[tokio::test(start_paused = true)]
async fn a_scan_at_a_revision_stops_at_a_page_that_makes_no_progress() {
    let first = core(
        |_, request, n| {
            assert!(n < 1_000, "the client asked for {n} pages that made no progress");
            match &request.body {
                Request::ScanAt { start, .. } => {
                    Ok(Ok(Response::ScanPage { kvs: Vec::new(), next: Some(start.clone()), read: read_info(3) }))
                }
                _ => Ok(Ok(Response::Done)),
            }
        },
        |c| c.members.truncate(1),
    );
    // An error, not a short answer: `more` alone would look like "limit reached", and the
    // caller could not go on from where it stopped.
    let got = first.scan_at(b"a", None, 10, 3, ReadConsistency::Linearizable).await;
    assert!(matches!(&got, Err(ClientError::Unexpected { what, .. }) if what.contains("does not move on")), "{got:?}");
    assert_eq!(calls(&first).len(), 1, "one page");
    // A page whose continuation goes backwards stops it too, after keeping the page's pairs.
    let backwards = core_backwards();
    let got = backwards.scan_at(b"b", None, 10, 3, ReadConsistency::Linearizable).await;
    assert!(matches!(&got, Err(ClientError::Unexpected { what, .. }) if what.contains("does not move on")), "{got:?}");
    assert_eq!(calls(&backwards).len(), 1, "one page");
    // A page without a pair whose continuation moves on is followed: a read at a revision
    // examines a bounded number of keys per page, and a range of keys deleted before the
    // revision gives such pages.
    let empty_first = core(
        |_, request, _| match &request.body {
            Request::ScanAt { start, .. } if start.as_slice() < &b"m"[..] => {
                Ok(Ok(Response::ScanPage { kvs: Vec::new(), next: Some(b"m".to_vec()), read: read_info(3) }))
            }
            Request::ScanAt { .. } => {
                Ok(Ok(Response::ScanPage { kvs: vec![kv(b"m")], next: None, read: read_info(3) }))
            }
            _ => Ok(Ok(Response::Done)),
        },
        |c| c.members.truncate(1),
    );
    let got = empty_first.scan_at(b"a", None, 10, 3, ReadConsistency::Linearizable).await.unwrap();
    assert_eq!(got.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), [b"m"]);
    assert!(!got.more);
    assert_eq!(calls(&empty_first).len(), 2, "two pages");
}

/// Answers a scan at a revision with the pair at its start and a continuation before it.
fn core_backwards() -> Core<FakeLink> {
    core(
        |_, request, n| {
            assert!(n < 1_000, "the client asked for {n} pages that made no progress");
            match &request.body {
                Request::ScanAt { start, .. } => {
                    Ok(Ok(Response::ScanPage { kvs: vec![kv(start)], next: Some(b"a".to_vec()), read: read_info(3) }))
                }
                _ => Ok(Ok(Response::Done)),
            }
        },
        |c| c.members.truncate(1),
    )
}

#[tokio::test(start_paused = true)]
async fn a_paged_transaction_is_read_again_when_the_state_changes_between_pages() {
    // Two gets answered one per page; the first second page finds the state changed.
    let core = core(
        |_, request, n| {
            let Request::TxnPaged { from, revision, .. } = &request.body else { return Ok(Ok(Response::Done)) };
            let at = if n < 1 { 5 } else { 6 };
            if let Some(r) = revision
                && *r != at
            {
                return Ok(Err(ApiError::PageExpired { revision: *r, current: at }));
            }
            let next = (*from == 0).then_some(1);
            let result = TxnResult::Get(Some(kv(if *from == 0 { b"a" } else { b"b" })));
            Ok(Ok(Response::TxnPage { succeeded: true, results: vec![result], revision: at, next }))
        },
        |c| c.members.truncate(1),
    );
    let gets = Txn {
        compare: vec![],
        success: vec![TxnOp::Get { key: b"a".to_vec() }, TxnOp::Get { key: b"b".to_vec() }],
        failure: vec![],
    };
    let outcome = core.read_txn(gets).await.unwrap();
    assert_eq!(outcome.results.len(), 2);
    assert_eq!(outcome.revision, 6, "the read that completed");
    let pages: Vec<(u32, Option<u64>)> = calls(&core)
        .iter()
        .filter_map(|(_, r)| match &r.body {
            Request::TxnPaged { from, revision, .. } => Some((*from, *revision)),
            _ => None,
        })
        .collect();
    // First page, expired second page, then the whole transaction again.
    assert_eq!(pages, [(0, None), (1, Some(5)), (0, None), (1, Some(6))]);
}

#[tokio::test(start_paused = true)]
async fn a_write_whose_session_ended_after_a_lost_answer_has_an_unknown_outcome() {
    // The first put's answer is lost; its retry finds the session gone (expired, or opened
    // before the cluster bound sessions to principals): applied or not, nobody can tell.
    let core = core(
        |node, request, n| {
            if matches!(request.body, Request::Put { .. }) {
                return if n == 1 { Err(LinkError::Lost("reset".into())) } else { Ok(Err(ApiError::SessionExpired)) };
            }
            leader_script(1)(node, request, n)
        },
        |c| c.members.truncate(1),
    );
    let error = core.write(put("a")).await.unwrap_err();
    assert!(matches!(error, ClientError::OutcomeUnknown { attempts: 2, .. }), "{error}");
}

#[test]
fn paged_reads_are_sent_whole_to_a_0_1_0_node_and_answered_as_pages() {
    use crate::link::{Unpaged, unpaged};
    let scan = Request::ScanPaged { start: b"a".to_vec(), end: None, limit: 2, read: ReadConsistency::Stale };
    let (sent, paged) = unpaged(ClientRequest { id: 1, session: None, body: scan });
    assert!(matches!(sent.body, Request::Scan { limit: 2, .. }));
    assert_eq!(paged, Some(Unpaged::Scan));
    let whole = Response::Scan { kvs: vec![kv(b"a"), kv(b"b")], more: true, read: read_info(1) };
    let Ok(Response::ScanPage { kvs, next, .. }) = Unpaged::Scan.page(whole) else { panic!() };
    assert_eq!((kvs.len(), next), (2, Some(b"b\0".to_vec())), "the next page starts after the last key");
    // A transaction page: the results from `from`, at the first page's revision only.
    let txn = Txn::default();
    let (sent, paged) =
        unpaged(ClientRequest { id: 2, session: None, body: Request::TxnPaged { txn, from: 1, revision: Some(4) } });
    assert!(matches!(sent.body, Request::Txn(_)));
    let results = vec![TxnResult::Put, TxnResult::Delete(true)];
    let at = |revision| Response::Txn { succeeded: true, results: results.clone(), revision };
    let page = paged.clone().unwrap().page(at(4)).unwrap();
    assert_eq!(
        page,
        Response::TxnPage { succeeded: true, results: vec![TxnResult::Delete(true)], revision: 4, next: None }
    );
    assert_eq!(paged.unwrap().page(at(5)), Err(ApiError::PageExpired { revision: 4, current: 5 }));
    // Anything else goes as it is.
    let (sent, paged) = unpaged(ClientRequest { id: 3, session: None, body: Request::Status });
    assert_eq!((sent.body, paged), (Request::Status, None));
}

/// A leader (node 1) whose first put waits until a second put is in flight with it.
#[derive(Default)]
struct PairLink {
    sessions: AtomicU64,
    puts: AtomicU64,
    second_put: tokio::sync::Notify,
    /// Every request as it arrived.
    seen: Mutex<Vec<ClientRequest>>,
}

impl Link for PairLink {
    async fn call(
        &self,
        node: NodeId,
        _addr: SocketAddr,
        request: ClientRequest,
        _attempt: u32,
    ) -> Result<ClientResponse, LinkError> {
        if node != id(1) {
            return Ok(ClientResponse {
                id: request.id,
                result: Err(ApiError::NotLeader { leader: Some(id(1)), addr: None }),
            });
        }
        lock(&self.seen).push(request.clone());
        let result = match request.body {
            Request::OpenSession => Response::Session(SessionId(self.sessions.fetch_add(1, Ordering::Relaxed) + 1)),
            Request::Put { .. } => {
                if self.puts.fetch_add(1, Ordering::Relaxed) == 0 {
                    self.second_put.notified().await;
                } else {
                    self.second_put.notify_one();
                }
                Response::Put { revision: 1 }
            }
            _ => Response::Done,
        };
        Ok(ClientResponse { id: request.id, result: Ok(result) })
    }
    fn forget(&self, _node: NodeId) {}
    fn close(&self) {}
}

/// Two clients over one link (`Client::session`): each has a session of its own, their writes
/// are in flight together (the first put is answered only once the second arrived), and the
/// request ids on the shared connections are unique.
#[tokio::test(start_paused = true)]
async fn clients_sharing_a_link_write_concurrently_in_their_own_sessions() {
    let members = (1..=3).map(|i| (id(i), SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)))).collect();
    let tls = TlsPaths { ca: "ca".into(), cert: "cert".into(), key: "key".into() };
    let mut config = ClientConfig::new(ClusterId::new("test").unwrap(), members, tls);
    config.seed = Some(7);
    let link = Arc::new(PairLink::default());
    let a = Core::new(Arc::clone(&link), config.clone());
    let b = Core::with_request_ids(Arc::clone(&link), config, Arc::clone(&a.next_request));
    let both =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(a.write(put("a")), b.write(put("b"))) })
            .await
            .expect("the two writes were not in flight together");
    assert!(both.0.is_ok() && both.1.is_ok(), "{both:?}");
    let seen = lock(&link.seen).clone();
    let sessions: std::collections::BTreeSet<u64> =
        seen.iter().filter(|r| matches!(r.body, Request::Put { .. })).map(|r| r.session.unwrap().session.0).collect();
    assert_eq!(sessions, [1, 2].into(), "one session each: {seen:?}");
    let ids: std::collections::BTreeSet<u64> = seen.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), seen.len(), "request ids are unique across the clients: {seen:?}");
}

/// A grant or a revoke whose answer was lost is retried in its session with the same sequence
/// number, so the node applies it once (no orphan lease; a revoke's retry is answered with its
/// first result, not "no such lease").
#[tokio::test(start_paused = true)]
async fn lease_grants_and_revokes_are_retried_in_their_session() {
    let (grant_lost, revoke_lost) =
        (std::sync::atomic::AtomicBool::new(false), std::sync::atomic::AtomicBool::new(false));
    let core = core(
        move |node, request, n| {
            // The first answer of each lease write is lost.
            let first = match request.body {
                Request::LeaseGrant { .. } => !grant_lost.swap(true, Ordering::Relaxed),
                Request::LeaseRevoke { .. } => !revoke_lost.swap(true, Ordering::Relaxed),
                _ => false,
            };
            if first {
                return Err(LinkError::Lost("connection reset".into()));
            }
            Ok(Ok(match request.body {
                Request::OpenSession => Response::Session(SessionId(42)),
                Request::LeaseGrant { ttl_ms } => Response::LeaseGranted { id: LeaseId(7), ttl_ms },
                Request::LeaseRevoke { .. } => Response::LeaseRevoked { deleted: 1, revision: 9 },
                _ => return leader_script(1)(node, request, n),
            }))
        },
        |c| c.members.truncate(1),
    );
    let lease = core.lease_grant(5_000).await.unwrap();
    assert_eq!((lease.id, lease.ttl_ms), (LeaseId(7), 5_000));
    assert_eq!(core.lease_revoke(lease.id).await.unwrap(), (1, 9));
    let sent: Vec<(Request, Option<Sequenced>)> = calls(&core)
        .into_iter()
        .filter(|c| c.1.body != Request::OpenSession)
        .map(|(_, r)| (r.body, r.session))
        .collect();
    let s = |seq| Some(Sequenced { session: SessionId(42), seq });
    assert_eq!(
        sent,
        vec![
            (Request::LeaseGrant { ttl_ms: 5_000 }, s(1)),
            (Request::LeaseGrant { ttl_ms: 5_000 }, s(1)),
            (Request::LeaseRevoke { id: LeaseId(7) }, s(2)),
            (Request::LeaseRevoke { id: LeaseId(7) }, s(2)),
        ]
    );
}

/// The cursor every paged scan goes through ([`Client::scan_pages`] — the CLI's `kv scan` —
/// the recipes' rankings, [`Client::scan`]): it follows continuations that move on, stops at
/// the limit with where the range goes on, and ends with an error naming the node at a
/// continuation that does not move or goes back, or past [`EMPTY_PAGES_MAX`] pages in a row
/// without a pair (the CLI's loop at a revision had none of these checks: a node answering
/// `next == start` kept it asking forever — review finding C).
#[test]
fn a_page_cursor_follows_only_pages_that_move_on() {
    use crate::pages::Cursor;
    let page = |keys: &[&[u8]], next: Option<&[u8]>| ScannedPage {
        kvs: keys.iter().map(|k| kv(k)).collect(),
        next: next.map(<[u8]>::to_vec),
        read: read_info(3),
    };
    // Two pages to the end of the range; pages ask what is left, at most `page_keys`.
    let mut c = Cursor::new(b"a", 5, 2);
    assert_eq!(c.next_page(), Some((&b"a"[..], 2)));
    c.took(&page(&[b"a", b"b"], Some(b"c"))).unwrap();
    assert_eq!(c.next_page(), Some((&b"c"[..], 2)));
    c.took(&page(&[b"c"], None)).unwrap();
    assert_eq!((c.next_page(), c.more()), (None, None));
    // The limit reached inside the range: over, with where it goes on.
    let mut c = Cursor::new(b"a", 3, u32::MAX);
    assert_eq!(c.next_page(), Some((&b"a"[..], 3)));
    c.took(&page(&[b"a", b"b"], Some(b"c"))).unwrap();
    assert_eq!(c.next_page(), Some((&b"c"[..], 1)));
    c.took(&page(&[b"c"], Some(b"d"))).unwrap();
    assert_eq!((c.next_page(), c.more()), (None, Some(&b"d"[..])));
    // A limit of 0 still reads one page (the first pair tells whether the range is empty);
    // a page asks at most what a node answers in one (SCAN_LIMIT_MAX).
    assert_eq!(Cursor::new(b"", 0, 10).next_page(), Some((&b""[..], 1)));
    assert_eq!(Cursor::new(b"", 50_000, u32::MAX).next_page(), Some((&b""[..], 10_000)));
    // A continuation that does not move, or goes back: an error naming the node, then over.
    for next in [&b"b"[..], b"a"] {
        let mut c = Cursor::new(b"b", 10, 10);
        let got = c.took(&page(&[], Some(next)));
        assert!(
            matches!(&got, Err(ClientError::Unexpected { node, what }) if *node == id(1) && what.contains("does not move on")),
            "{got:?}"
        );
        assert_eq!(c.next_page(), None);
        // The error stays: a caller that asks again is not told the scan ended well.
        assert!(matches!(c.failure(), Some(ClientError::Unexpected { what, .. }) if what.contains("does not move on")));
    }
    // Pages without a pair that move on are followed, EMPTY_PAGES_MAX of them in a row.
    let mut c = Cursor::new(b"k", 10, 10);
    for i in 0..EMPTY_PAGES_MAX {
        c.took(&page(&[], Some(format!("k{i:06}").as_bytes()))).unwrap();
    }
    let got = c.took(&page(&[], Some(b"z")));
    assert!(
        matches!(&got, Err(ClientError::Unexpected { what, .. }) if what.contains("1025 pages without a pair")),
        "{got:?}"
    );
    // A pair resets the count.
    let mut c = Cursor::new(b"k", 10, 10);
    for i in 0..2 * EMPTY_PAGES_MAX {
        let key = format!("k{i:06}");
        let keys: &[&[u8]] = if i % 1000 == 999 { &[b"k"] } else { &[] };
        c.took(&page(keys, Some(key.as_bytes()))).unwrap();
    }
}
