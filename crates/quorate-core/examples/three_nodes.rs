//! Three cores over an in-memory network: elect a leader, commit commands, read linearizably.

use quorate_core::{Config, Instant, Message, Raft, ReadId, ReadLevel, Role};
use quorate_log::{Configuration, Data, EntryPayload, MemLog, NodeId};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ids: Vec<NodeId> = (1..=3).filter_map(NodeId::new).collect();
    let conf = Configuration::with_voters(ids.iter().copied())?;
    let mut nodes = Vec::new();
    for id in &ids {
        nodes.push(Raft::new(Config::new(*id), MemLog::new(conf.clone()), Instant::ZERO)?);
    }
    let mut now = Instant::ZERO;
    let mut network: Vec<Message> = Vec::new();
    let step = |nodes: &mut Vec<Raft<MemLog>>, network: &mut Vec<Message>, now: Instant| {
        for m in std::mem::take(network) {
            let to = (m.to.get() - 1) as usize;
            nodes[to].handle_message(now, m);
        }
        for r in nodes.iter_mut() {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
            let ready = r.ready();
            if let Some(p) = ready.persist {
                // A real driver writes this to disk and fsyncs before reporting it.
                if let Some(hs) = p.hard_state {
                    r.storage_mut().set_hard_state(hs);
                }
                r.storage_mut().append(&p.entries).expect("contiguous batch");
                r.persisted(now, p.io);
            }
            network.extend(ready.messages);
            for e in ready.committed {
                if let EntryPayload::Command(d) = &e.payload {
                    println!("node {} applies {}: {:?}", r.id(), e.index, d);
                }
            }
            for read in ready.reads {
                println!("node {} may serve read {:?} once applied >= {}", r.id(), read.id, read.index);
            }
        }
    };
    // Let time pass until someone is elected.
    while !nodes.iter().any(|r| r.role() == Role::Leader) {
        now = now.saturating_add(Duration::from_millis(10));
        step(&mut nodes, &mut network, now);
    }
    let leader = nodes.iter().position(|r| r.role() == Role::Leader).expect("a leader");
    println!("node {} leads term {}", nodes[leader].id(), nodes[leader].term());
    for cmd in ["x=1", "y=2", "x=3"] {
        nodes[leader].propose(now, Data::from(cmd))?;
    }
    nodes[leader].read(now, ReadId(1), ReadLevel::Linearizable)?;
    for _ in 0..10 {
        now = now.saturating_add(Duration::from_millis(1));
        step(&mut nodes, &mut network, now);
    }
    println!("commit index everywhere: {:?}", nodes.iter().map(|r| r.commit_index().0).collect::<Vec<_>>());
    Ok(())
}
