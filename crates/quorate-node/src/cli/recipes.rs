//! `quorate lock NAME [-- COMMAND]` and `quorate elect NAME [VALUE]`: the client's lock and
//! election recipes (`quorate_client::recipes`) from the command line, as `etcdctl lock` and
//! `etcdctl elect`.

use super::output::{Format, escape, print_json};
use super::{ConnArgs, Outcome};
use clap::Args;
use nix::sys::signal::Signal;
use quorate_client::recipes::{Election, Leader, Lock, RecipeError, Session};
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use tokio::time::Instant;

/// `quorate lock`.
#[derive(Debug, Args)]
pub(crate) struct LockArgs {
    /// The lock's name (no `/`).
    pub(crate) name: String,
    /// The TTL of the lease the lock is held on, ms: if this process stops renewing it (dies,
    /// is paused, is cut off) for that long, the lock passes on.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub(crate) ttl_ms: u64,
    /// Give up (exit 8) if the lock is not acquired within MS milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) wait_ms: u64,
    /// Without a command: hold the lock for MS milliseconds, then release it (default: until
    /// SIGINT, SIGTERM, SIGHUP or the end of standard input).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) hold_ms: Option<u64>,
    /// The command to run while holding the lock (after `--`), with QUORATE_LOCK_KEY and
    /// QUORATE_LOCK_TOKEN in its environment; the lock is released when it exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

/// `quorate elect`.
#[derive(Debug, Args)]
pub(crate) struct ElectArgs {
    /// The election's name (no `/`).
    pub(crate) name: String,
    /// The value to campaign with (what observers see while this process leads).
    pub(crate) value: Option<String>,
    /// Do not campaign: print the leader, then each change of leader (`-o json`: one object
    /// per line, `{"leader": null}` when there is none).
    #[arg(long)]
    pub(crate) listen: bool,
    /// With --listen: stop after N leaders printed (exit 0; with --duration-ms, exit 1 if
    /// fewer came in time).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// Stop after MS milliseconds: a leader resigns then (exit 0). A candidate not yet elected
    /// by then gives up (exit 8).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) duration_ms: Option<u64>,
    /// The TTL of the candidate's lease, ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub(crate) ttl_ms: u64,
}

/// A candidate's wait without --duration-ms: a year.
const WAIT_FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// A recipe error as an `anyhow::Error` whose chain holds the client error, if any (so the
/// exit code is that of the request that failed).
fn recipe(e: RecipeError) -> anyhow::Error {
    match e {
        RecipeError::Client(c) => c.into(),
        other => other.into(),
    }
}

/// Waits for SIGINT, SIGTERM, SIGHUP or the end of standard input (read on a thread of its
/// own).
async fn interrupted() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        let mut stdin = std::io::stdin().lock();
        // Bounded per read; ends at EOF or an error.
        while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let signal = async {
        match Signals::new() {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::select! {
        () = signal => {}
        _ = rx => {}
    }
}

/// How long a command that was passed a signal has to end before its process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How a command run under the lock ended.
enum End {
    /// It exited.
    Exited(std::process::ExitStatus),
    /// Quorate was sent this signal.
    Signal(Signal),
    /// The lock's lease was lost.
    Lost(quorate_client::LeaseLost),
}

/// SIGINT, SIGTERM and SIGHUP, caught.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal caught.
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }
}

/// Sends `signal` to the process group `group` (the command's; nothing if it has no id, or
/// if the group is empty).
fn signal_group(group: Option<i32>, signal: Signal) {
    if let Some(group) = group.filter(|g| *g > 1) {
        // A group that is gone gives ESRCH: nothing left to signal.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), signal);
    }
}

/// A shell's exit code for a process ended by `signal`: 128 + the signal.
fn signal_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(1)
}

/// The outcome of a command that ended on its own: its exit code, or 128 + the signal that
/// ended it.
fn exit_outcome(program: &str, status: std::process::ExitStatus) -> Outcome {
    match status.code() {
        Some(0) => Outcome::Ok,
        Some(c) => Outcome::Code(u8::try_from(c).unwrap_or(1)),
        None => {
            eprintln!("`{program}` was ended by a signal ({status})");
            status.signal().map_or(Outcome::Failed, |s| Outcome::Code(signal_code(s)))
        }
    }
}

pub(crate) async fn lock(conn: &ConnArgs, args: LockArgs) -> anyhow::Result<Outcome> {
    let lock = Lock::new(&args.name).map_err(|e| super::output::usage(e.to_string()))?;
    let client = conn.client()?;
    let session = Session::grant(&client, args.ttl_ms).await.map_err(recipe)?;
    let guard = match lock.acquire(&session, Duration::from_millis(args.wait_ms)).await {
        Ok(g) => g,
        Err(e) => {
            // Leave nothing behind: the lease takes the key along.
            let _ = session.close().await;
            return Err(recipe(e));
        }
    };
    let key = String::from_utf8_lossy(guard.key()).into_owned();
    let token = guard.token();
    if conn.output == Format::Json {
        print_json(&json!({"name": args.name, "key": key, "token": token, "lease": guard.lease().0}))?;
    } else {
        writeln!(std::io::stdout(), "{key}\ntoken {token}")?;
    }
    std::io::stdout().flush()?;

    let mut outcome = Outcome::Ok;
    // Whether the lease was lost (then: exit 1, nothing to release).
    let mut lost_lease = false;
    if let Some((program, rest)) = args.command.split_first() {
        // Caught from here on (no longer the default of ending quorate at once): a signal is
        // forwarded to the command, which is waited for before the lock is released.
        let mut signals = Signals::new()?;
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .env("QUORATE_LOCK_KEY", &key)
            .env("QUORATE_LOCK_TOKEN", token.to_string())
            // Its own process group: a signal or a kill reaches the command's children too
            // (`sh -c '…'` and what it started).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| super::output::usage(format!("cannot run `{program}`: {e}")))?;
        let group = child.id().and_then(|id| i32::try_from(id).ok());
        let end = tokio::select! {
            status = child.wait() => End::Exited(status?),
            signal = signals.recv() => End::Signal(signal),
            lost = guard.lost() => End::Lost(lost),
        };
        outcome = match end {
            End::Exited(status) => exit_outcome(program, status),
            End::Signal(signal) => {
                eprintln!(
                    "{signal}: passing it to `{program}` and waiting for it (at most {} s)",
                    STOP_GRACE.as_secs()
                );
                signal_group(group, signal);
                let status = tokio::select! {
                    status = child.wait() => Some(status?),
                    () = tokio::time::sleep(STOP_GRACE) => None,
                    lost = guard.lost() => {
                        eprintln!("the lock's lease was lost ({lost}) while `{program}` was stopping");
                        None
                    }
                };
                let status = match status {
                    Some(s) => s,
                    None => {
                        eprintln!("killing `{program}` (its process group)");
                        signal_group(group, Signal::SIGKILL);
                        child.wait().await?
                    }
                };
                if guard.is_lost().is_some() {
                    lost_lease = true;
                    Outcome::Failed
                } else {
                    match status.code() {
                        Some(0) => Outcome::Ok,
                        Some(c) => Outcome::Code(u8::try_from(c).unwrap_or(1)),
                        None => Outcome::Code(signal_code(status.signal().unwrap_or(signal as i32))),
                    }
                }
            }
            End::Lost(lost) => {
                // The lock may be someone else's now: stop the command, all of it.
                eprintln!("the lock's lease was lost ({lost}); the lock may be held by another: killing `{program}`");
                signal_group(group, Signal::SIGKILL);
                let _ = child.wait().await;
                lost_lease = true;
                Outcome::Failed
            }
        };
        // What the command left running in its group would run on without the lock.
        signal_group(group, Signal::SIGKILL);
    } else {
        let hold = async {
            match args.hold_ms {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => interrupted().await,
            }
        };
        tokio::select! {
            () = hold => {}
            lost = guard.lost() => {
                eprintln!("the lock's lease was lost ({lost}); the lock may be held by another");
                lost_lease = true;
                outcome = Outcome::Failed;
            }
        }
    }
    if lost_lease {
        // The lease is lost: exit 1 whatever closing the session (revoking the lost lease)
        // answers.
        if let Err(e) = session.close().await {
            eprintln!("closing the session: {e}");
        }
        return Ok(outcome);
    }
    guard.release(&session).await.map_err(recipe)?;
    session.close().await.map_err(recipe)?;
    Ok(outcome)
}

fn leader_json(l: Option<&Leader>) -> Value {
    match l {
        Some(l) => json!({
            "leader": {
                "key": String::from_utf8_lossy(&l.key),
                "value": String::from_utf8_lossy(&l.value),
                "revision": l.revision,
            }
        }),
        None => json!({"leader": Value::Null}),
    }
}

fn leader_text(l: Option<&Leader>) -> String {
    match l {
        Some(l) => format!("{} {} (revision {})", escape(&l.key, false), escape(&l.value, false), l.revision),
        None => "no leader".into(),
    }
}

pub(crate) async fn elect(conn: &ConnArgs, args: ElectArgs) -> anyhow::Result<Outcome> {
    let election = Election::new(&args.name).map_err(|e| super::output::usage(e.to_string()))?;
    let deadline = args.duration_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let client = conn.client()?;
    let as_json = conn.output == Format::Json;
    if args.listen {
        if args.value.is_some() {
            return Err(super::output::usage("--listen does not campaign: leave out VALUE"));
        }
        let mut observer = election.observe(&client);
        let mut seen = 0u64;
        loop {
            let next = observer.next();
            let leader = match deadline {
                Some(d) => match tokio::time::timeout_at(d, next).await {
                    Ok(l) => l,
                    Err(_) => {
                        return Ok(match args.count {
                            Some(c) => {
                                eprintln!("{seen} of {c} leaders seen within {} ms", args.duration_ms.unwrap_or(0));
                                Outcome::Failed
                            }
                            None => Outcome::Ok,
                        });
                    }
                },
                None => next.await,
            };
            let leader = leader.map_err(recipe)?;
            let line = if as_json { leader_json(leader.as_ref()).to_string() } else { leader_text(leader.as_ref()) };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                return Ok(Outcome::Ok);
            }
        }
    }
    if args.count.is_some() {
        return Err(super::output::usage("--count goes with --listen"));
    }
    let Some(value) = args.value else {
        return Err(super::output::usage("give the VALUE to campaign with, or --listen"));
    };
    let session = Session::grant(&client, args.ttl_ms).await.map_err(recipe)?;
    // Without --duration-ms, a candidate waits as long as it takes.
    let wait = deadline.map_or(WAIT_FOREVER, |d| d.saturating_duration_since(Instant::now()));
    let leadership = match election.campaign(&session, value.as_bytes(), wait).await {
        Ok(l) => l,
        Err(e) => {
            let _ = session.close().await;
            return Err(recipe(e));
        }
    };
    let leader = Leader::from(quorate_client::KeyValue {
        key: leadership.key().to_vec(),
        value: value.into_bytes(),
        create_revision: leadership.revision(),
        mod_revision: leadership.revision(),
        version: 1,
    });
    let line = if as_json { leader_json(Some(&leader)).to_string() } else { leader_text(Some(&leader)) };
    writeln!(std::io::stdout(), "{line}")?;
    std::io::stdout().flush()?;
    let hold = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => interrupted().await,
        }
    };
    let mut outcome = Outcome::Ok;
    tokio::select! {
        () = hold => {}
        lost = leadership.lost() => {
            eprintln!("the leader's lease was lost ({lost}); another candidate may lead");
            outcome = Outcome::Failed;
        }
    }
    if outcome == Outcome::Ok {
        leadership.resign(&session).await.map_err(recipe)?;
    }
    session.close().await.map_err(recipe)?;
    Ok(outcome)
}
