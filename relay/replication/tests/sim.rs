//! A deterministic simulation in virtual time: the worker outboxes of
//! relay A replicate to relay B's standby store over a byte stream that
//! delays, chunks, cuts and reconnects, with deltas that sometimes fail to
//! apply and queues small enough to overflow.
//!
//! The commit rule is checked at every step: whenever an outbox reports a
//! commit acknowledged by the peer, the standby holds that commit or a
//! later one, and whatever the standby holds for a flow is byte for byte
//! the checkpoint the sender had at that commit (deltas were applied to the
//! right base). After the network heals, every flow is protected again and
//! the standby holds exactly each live flow's latest state.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use relay_codec::{Reader, Writer};
use relay_replication::{
    CommitNo, Committed, Deframer, Encoding, Envelope, FlowId, Hello, Instant, Message, Outbox,
    OutboxConfig, PROTOCOL_VERSION, Payload, Protection, Standby, StandbyConfig, StreamId,
};

const A: u16 = 1;
const B: u16 = 2;
const WORKERS: u16 = 2;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p` per mille.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

// ---- The toy checkpoint: a few counters. ----------------------------------

fn encode_state(state: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.u8(state.len() as u8);
    for v in state {
        w.u64(*v);
    }
    out
}

fn decode_state(bytes: &[u8]) -> Result<Vec<u64>, String> {
    let mut r = Reader::new(bytes);
    let n = r.u8("len").map_err(|e| e.to_string())?;
    let v = (0..n)
        .map(|_| r.u64("value"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    r.finish().map_err(|e| e.to_string())?;
    Ok(v)
}

fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A delta: the base's hash (so a delta applied to the wrong base is
/// caught), a poison flag (the standby's codec refuses it, as it would a
/// garbled delta), then the change of each counter. `None` when the
/// number of counters changed: only a full checkpoint can say that.
fn encode_delta(base: &[u8], new: &[u64], poison: bool) -> Option<Vec<u8>> {
    let old = decode_state(base).ok()?;
    if old.len() != new.len() {
        return None;
    }
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.u32(fnv(base));
    w.bool(poison);
    for (n, o) in new.iter().zip(&old) {
        w.zigzag(n.wrapping_sub(*o) as i64);
    }
    Some(out)
}

fn apply_delta(base: &[u8], delta: &[u8], wrong_base: &Cell<u64>) -> Result<Vec<u8>, String> {
    let mut r = Reader::new(delta);
    let hash = r.u32("base hash").map_err(|e| e.to_string())?;
    if hash != fnv(base) {
        wrong_base.set(wrong_base.get() + 1);
        return Err("applied to the wrong base".into());
    }
    if r.bool("poison").map_err(|e| e.to_string())? {
        return Err("garbled".into());
    }
    let mut state = decode_state(base)?;
    for v in &mut state {
        *v = v.wrapping_add(r.zigzag("change").map_err(|e| e.to_string())? as u64);
    }
    r.finish().map_err(|e| e.to_string())?;
    Ok(encode_state(&state))
}

// ---- The sender: relay A's workers. ---------------------------------------

struct SimFlow {
    state: Vec<u64>,
    latest: CommitNo,
    /// Highest commit released to the "client" (peer ack or local).
    released: Option<CommitNo>,
    /// Highest commit the peer acknowledged.
    protected: Option<CommitNo>,
}

struct Worker {
    outbox: Outbox,
    flows: BTreeMap<FlowId, SimFlow>,
    counter: u64,
}

/// The parameters of one run.
#[derive(Debug, Clone)]
struct Params {
    seed: u64,
    millis: u64,
    outbox: OutboxConfig,
    /// Per mille per millisecond.
    cut: u64,
    /// Per mille of deltas garbled.
    poison: u64,
    /// Largest one-way delay, ms.
    max_delay: u64,
    /// Per mille per millisecond per flow.
    commit_rate: u64,
}

/// Counters of what a run went through, to check the scenarios happened.
#[derive(Debug, Default, Clone)]
struct Seen {
    peer_acks: u64,
    local_acks: u64,
    cuts: u64,
    peer_downs: u64,
    resyncs: u64,
    overflows: u64,
    fulls: u64,
    deltas: u64,
    flows: u64,
    forgets: u64,
}

struct Pipe {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    last: Instant,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            chunks: VecDeque::new(),
            last: Instant::ZERO,
        }
    }

    /// Queues `bytes` in a few chunks, in order, each with a seeded delay.
    fn send(&mut self, rng: &mut Rng, now: Instant, max_delay: u64, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = if bytes.len() < 8 || rng.chance(500) {
                bytes.len()
            } else {
                rng.below(bytes.len() as u64) as usize + 1
            };
            let at = (now + Duration::from_millis(rng.below(max_delay + 1))).max(self.last);
            self.last = at;
            self.chunks.push_back((at, bytes[..n].to_vec()));
            bytes = &bytes[n..];
        }
    }

    fn due(&mut self, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        while self.chunks.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, c)) = self.chunks.pop_front() {
                out.extend(c);
            }
        }
        out
    }
}

/// One backplane connection: a byte stream each way.
struct Connection {
    a_to_b: Pipe,
    b_to_a: Pipe,
    at_b: Deframer,
    at_a: Deframer,
}

type Codec = Box<dyn Fn(&[u8], &[u8]) -> Result<Vec<u8>, String>>;

struct Sim {
    p: Params,
    rng: Rng,
    now: Instant,
    workers: Vec<Worker>,
    /// Every checkpoint the sender ever committed.
    history: HashMap<FlowId, BTreeMap<CommitNo, Vec<u8>>>,
    standby: Standby<Codec>,
    wrong_base: Rc<Cell<u64>>,
    conn: Option<Connection>,
    reconnect_at: Instant,
    seen: Seen,
    healing: bool,
}

impl Sim {
    fn new(p: Params) -> Sim {
        let wrong_base = Rc::new(Cell::new(0));
        let wb = wrong_base.clone();
        let codec: Codec = Box::new(move |base, delta| apply_delta(base, delta, &wb));
        let workers = (0..WORKERS)
            .map(|w| Worker {
                outbox: Outbox::new(StreamId::new(A, w), p.outbox.clone()).unwrap(),
                flows: BTreeMap::new(),
                counter: 0,
            })
            .collect();
        Sim {
            rng: Rng(p.seed),
            p,
            now: Instant::ZERO,
            workers,
            history: HashMap::new(),
            standby: Standby::new(A, codec, StandbyConfig::new(B)),
            wrong_base,
            conn: None,
            reconnect_at: Instant::ZERO,
            seen: Seen::default(),
            healing: false,
        }
    }

    fn run(mut self) -> Seen {
        for _ in 0..self.p.millis {
            self.step();
        }
        // Heal: no more cuts, no garbled deltas, no new commits; re-seeding
        // and acks finish.
        self.healing = true;
        for _ in 0..1000 {
            self.step();
        }
        self.check_healed();
        assert_eq!(self.wrong_base.get(), 0, "a delta met the wrong base");
        self.seen.resyncs = self.workers.iter().map(|w| w.outbox.stats().resyncs).sum();
        self.seen.overflows = self
            .workers
            .iter()
            .map(|w| w.outbox.stats().overflows)
            .sum();
        self.seen.fulls = self.workers.iter().map(|w| w.outbox.stats().fulls).sum();
        self.seen.deltas = self.workers.iter().map(|w| w.outbox.stats().deltas).sum();
        self.seen
    }

    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        self.network();
        self.deliver_to_b();
        self.deliver_to_a();
        for w in 0..self.workers.len() {
            self.work(w);
        }
        self.check();
    }

    /// Cuts and reconnections.
    fn network(&mut self) {
        if self.conn.is_some() && !self.healing && self.rng.chance(self.p.cut) {
            self.seen.cuts += 1;
            self.conn = None;
            self.standby.disconnected();
            self.reconnect_at = self.now + Duration::from_millis(1 + self.rng.below(40));
            for w in 0..self.workers.len() {
                // Sometimes membership declares the peer down (commits turn
                // local at once); otherwise the outbox learns only at the
                // reconnection, and what it sends meanwhile is lost.
                if self.rng.chance(500) {
                    self.seen.peer_downs += 1;
                    let released = self.workers[w].outbox.peer_down();
                    for (flow, commit) in released {
                        self.release(w, flow, commit, false);
                    }
                }
            }
        }
        if self.conn.is_none() && self.now >= self.reconnect_at {
            let mut conn = Connection {
                a_to_b: Pipe::new(),
                b_to_a: Pipe::new(),
                at_b: Deframer::new(),
                at_a: Deframer::new(),
            };
            let mut hello = Vec::new();
            Envelope::control(
                A,
                Message::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    relay: A,
                    name: "a".into(),
                    workers: WORKERS,
                    boot_epoch: 1,
                }),
            )
            .encode(&mut hello)
            .unwrap();
            conn.a_to_b
                .send(&mut self.rng, self.now, self.p.max_delay, &hello);
            self.conn = Some(conn);
            for w in &mut self.workers {
                w.outbox.peer_reset();
            }
        }
    }

    fn deliver_to_b(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let bytes = conn.a_to_b.due(self.now);
        conn.at_b.push(&bytes);
        while let Some(env) = conn.at_b.pop().unwrap() {
            match &env.message {
                Message::Hello(h) => self.standby.handle_hello(h).unwrap(),
                _ => self.standby.handle(env).unwrap(),
            }
        }
        let mut out = Vec::new();
        self.standby.poll_transmit(&mut out);
        conn.b_to_a
            .send(&mut self.rng, self.now, self.p.max_delay, &out);
    }

    fn deliver_to_a(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let bytes = conn.b_to_a.due(self.now);
        conn.at_a.push(&bytes);
        let mut envs = Vec::new();
        while let Some(env) = conn.at_a.pop().unwrap() {
            envs.push(env);
        }
        for env in envs {
            match env.message {
                Message::Ack { stream, seq } => {
                    assert_eq!(stream.relay, A);
                    let w = usize::from(stream.worker);
                    let acked = self.workers[w].outbox.handle_ack(seq).unwrap();
                    for (flow, commit) in acked {
                        self.release(w, flow, commit, true);
                    }
                }
                Message::ResyncRequest { stream, seq, flow } => {
                    let w = usize::from(stream.worker);
                    self.workers[w].outbox.handle_resync(seq, flow).unwrap();
                }
                m => panic!("unexpected {m:?}"),
            }
        }
    }

    /// The worker releases what `commit` covers. A peer ack must match
    /// what the standby holds at this very moment.
    fn release(&mut self, w: usize, flow: FlowId, commit: CommitNo, by_peer: bool) {
        let f = self.workers[w]
            .flows
            .get_mut(&flow)
            .expect("acks only for live flows");
        assert!(
            commit <= f.latest,
            "{flow}: released {commit} past {}",
            f.latest
        );
        assert!(
            f.released.is_none_or(|r| commit > r),
            "{flow}: {commit} released twice or out of order"
        );
        f.released = Some(commit);
        if by_peer {
            self.seen.peer_acks += 1;
            f.protected = Some(commit);
            let (held, bytes) = self
                .standby
                .get(flow)
                .unwrap_or_else(|| panic!("{flow}: acked {commit} but the standby lacks it"));
            assert!(
                held >= commit,
                "{flow}: acked {commit}, standby holds {held}"
            );
            assert_eq!(Some(&bytes.to_vec()), self.history[&flow].get(&held));
        } else {
            self.seen.local_acks += 1;
        }
    }

    fn work(&mut self, w: usize) {
        let healing = self.healing;
        // New flows.
        if !healing && self.workers[w].flows.len() < 12 && self.rng.chance(40) {
            let worker = &mut self.workers[w];
            worker.counter += 1;
            let flow = FlowId {
                relay: A,
                worker: w as u16,
                counter: worker.counter,
            };
            let n = 1 + self.rng.below(3) as usize;
            worker.flows.insert(
                flow,
                SimFlow {
                    state: vec![0; n],
                    latest: CommitNo::new(0, 0),
                    released: None,
                    protected: None,
                },
            );
            self.seen.flows += 1;
            self.commit(w, flow);
        }
        // Commits and ends.
        if !healing {
            let ids: Vec<FlowId> = self.workers[w].flows.keys().copied().collect();
            for flow in ids {
                if self.rng.chance(self.p.commit_rate) {
                    self.commit(w, flow);
                } else if self.rng.chance(3) {
                    self.workers[w].outbox.forget(flow);
                    self.workers[w].flows.remove(&flow);
                    self.seen.forgets += 1;
                }
            }
        }
        // Re-seeds.
        while let Some(flow) = self.workers[w].outbox.poll_needs_full() {
            let f = &self.workers[w].flows[&flow];
            let latest = f.latest;
            let bytes = self.history[&flow][&latest].clone();
            let r = self.workers[w]
                .outbox
                .commit(flow, latest, Payload::Full(&bytes))
                .unwrap();
            if r == Committed::Local && self.workers[w].flows[&flow].released < Some(latest) {
                self.release(w, flow, latest, false);
            }
        }
        // One write per loop.
        let mut batch = Vec::new();
        self.workers[w].outbox.poll_transmit(&mut batch);
        if let Some(conn) = self.conn.as_mut() {
            conn.a_to_b
                .send(&mut self.rng, self.now, self.p.max_delay, &batch);
        }
    }

    /// A new commit of `flow`: a counter changes (sometimes the number of
    /// counters, which only a full checkpoint can carry).
    fn commit(&mut self, w: usize, flow: FlowId) {
        let poison = self.rng.chance(self.p.poison);
        let grow = self.rng.chance(20);
        let (no, new_state) = {
            let f = &self.workers[w].flows[&flow];
            let mut s = f.state.clone();
            if grow && s.len() < 6 {
                s.push(self.rng.next_u64() >> 8);
            } else {
                let i = self.rng.below(s.len() as u64) as usize;
                s[i] = s[i]
                    .wrapping_add(self.rng.below(1 << 20))
                    .wrapping_sub(1 << 19);
            }
            (f.latest.next(), s)
        };
        let full = encode_state(&new_state);
        self.history
            .entry(flow)
            .or_default()
            .insert(no, full.clone());
        let latest = self.workers[w].flows[&flow].latest;
        let outbox = &mut self.workers[w].outbox;
        let delta;
        let payload = match outbox.encoding_for(flow) {
            Encoding::LocalOnly => Payload::LocalOnly,
            Encoding::Full => Payload::Full(&full),
            Encoding::Delta { base } => {
                assert_eq!(base, latest);
                match encode_delta(&self.history[&flow][&base], &new_state, poison) {
                    Some(d) => {
                        delta = d;
                        Payload::Delta {
                            base,
                            bytes: &delta,
                        }
                    }
                    None => Payload::Full(&full),
                }
            }
        };
        let r = outbox.commit(flow, no, payload).unwrap();
        let f = self.workers[w].flows.get_mut(&flow).expect("live");
        f.state = new_state;
        f.latest = no;
        if r == Committed::Local {
            self.release(w, flow, no, false);
        }
    }

    /// The standby never holds a state the sender did not have at that
    /// commit, and never less than what the sender was told is protected.
    fn check(&self) {
        for flow in self.standby.flows() {
            let (held, bytes) = self.standby.get(flow).expect("listed");
            assert_eq!(
                self.history.get(&flow).and_then(|h| h.get(&held)),
                Some(&bytes.to_vec()),
                "{flow}@{held}: the standby holds a state the sender never had"
            );
        }
        for w in &self.workers {
            for (flow, f) in &w.flows {
                if let Some(p) = f.protected {
                    let held = self.standby.get(*flow).map(|(c, _)| c);
                    assert!(
                        held >= Some(p),
                        "{flow}: protected at {p}, the standby holds {held:?}"
                    );
                }
            }
        }
    }

    /// After healing: every flow protected, the standby holds exactly the
    /// live flows at their latest commit, and adoption would rebuild each.
    fn check_healed(&mut self) {
        let mut live = BTreeMap::new();
        for w in &self.workers {
            assert_eq!(w.outbox.protection(), Protection::Protected);
            assert_eq!(w.outbox.backlog_bytes(), 0);
            for (flow, f) in &w.flows {
                assert_eq!(f.released, Some(f.latest), "{flow}: not released");
                live.insert(*flow, (f.latest, encode_state(&f.state)));
            }
        }
        let dropped: u64 = self
            .workers
            .iter()
            .map(|w| w.outbox.stats().forgets_dropped)
            .sum();
        assert_eq!(dropped, 0);
        let adopted = self.standby.take_all();
        assert_eq!(
            adopted
                .into_iter()
                .map(|a| (a.flow, (a.commit, a.bytes)))
                .collect::<BTreeMap<_, _>>(),
            live,
            "adoption does not rebuild the sender's latest states"
        );
    }
}

fn params(seed: u64) -> Params {
    Params {
        seed,
        millis: 3000,
        outbox: OutboxConfig::default(),
        cut: 3,
        poison: 30,
        max_delay: 4,
        commit_rate: 150,
    }
}

fn report(name: &str, seen: &[Seen]) {
    let sum = |f: fn(&Seen) -> u64| seen.iter().map(f).sum::<u64>();
    eprintln!(
        "{name}: {} runs, {} flows, {} fulls, {} deltas, {} peer acks, {} local acks, \
         {} cuts, {} peer downs, {} resyncs, {} overflows, {} forgets",
        seen.len(),
        sum(|s| s.flows),
        sum(|s| s.fulls),
        sum(|s| s.deltas),
        sum(|s| s.peer_acks),
        sum(|s| s.local_acks),
        sum(|s| s.cuts),
        sum(|s| s.peer_downs),
        sum(|s| s.resyncs),
        sum(|s| s.overflows),
        sum(|s| s.forgets),
    );
}

#[test]
fn cuts_reconnections_and_resyncs_keep_the_commit_rule() {
    let seen: Vec<Seen> = (1..=24).map(|seed| Sim::new(params(seed)).run()).collect();
    report("cuts", &seen);
    let sum = |f: fn(&Seen) -> u64| seen.iter().map(f).sum::<u64>();
    assert!(sum(|s| s.cuts) > 50);
    assert!(sum(|s| s.peer_downs) > 20);
    assert!(sum(|s| s.resyncs) > 20);
    assert!(sum(|s| s.deltas) > 10 * sum(|s| s.cuts));
    assert!(sum(|s| s.peer_acks) > sum(|s| s.local_acks));
}

#[test]
fn a_small_queue_overflows_and_recovers() {
    let seen: Vec<Seen> = (100..112)
        .map(|seed| {
            let mut p = params(seed);
            p.outbox.max_messages = 40;
            // A slow backplane: the backlog builds up.
            p.max_delay = 12;
            p.commit_rate = 300;
            p.cut = 1;
            Sim::new(p).run()
        })
        .collect();
    report("overflow", &seen);
    let sum = |f: fn(&Seen) -> u64| seen.iter().map(f).sum::<u64>();
    assert!(sum(|s| s.overflows) > 10);
    assert!(sum(|s| s.local_acks) > 100);
}

#[test]
fn a_clean_backplane_needs_no_local_commits() {
    let mut p = params(7);
    p.cut = 0;
    p.poison = 0;
    let seen = Sim::new(p).run();
    report("clean", std::slice::from_ref(&seen));
    // Only the commits made before the first connection are local.
    assert_eq!(seen.local_acks, 0);
    assert_eq!(seen.resyncs, 0);
    assert!(seen.deltas > 5 * seen.fulls);
}
