//! Hand-built segments in, exact segments out (smoltcp style): connections
//! are put in a state by setting their fields, not by replaying a handshake.

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use relay_wire::{SeqNumber, TcpFlags, TcpOptions, TcpRepr, TcpTimestamp};

use super::*;
use crate::config::{Config, Keepalive, ReleaseMode};
use crate::isn::IsnSecret;
use crate::ranges::MAX_OOO_RANGES;
use crate::time::Instant;
use crate::tuple::FourTuple;

const T0: Instant = Instant::from_secs(10);
const ISS: SeqNumber = SeqNumber(10_000);
const IRS: SeqNumber = SeqNumber(50_000);
const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443);
const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000);
const WIN: u16 = 64000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cfg() -> Config {
    Config {
        mss: 1000,
        recv_buffer: 64000,
        send_buffer: 64000,
        timestamps: false,
        delayed_ack: None,
        release: ReleaseMode::OnDelivery,
        ..Config::default()
    }
}

fn tuple() -> FourTuple {
    FourTuple::new(LOCAL, REMOTE)
}

/// A segment from the peer.
fn seg(seq: SeqNumber, ack: Option<SeqNumber>, flags: TcpFlags, payload: &[u8]) -> TcpRepr<'_> {
    TcpRepr {
        src_port: REMOTE.port(),
        dst_port: LOCAL.port(),
        seq_number: seq,
        ack_number: ack.unwrap_or(SeqNumber(0)),
        flags: if ack.is_some() {
            flags | TcpFlags::ACK
        } else {
            flags
        },
        window_len: WIN,
        options: TcpOptions::default(),
        payload,
    }
}

fn ack_seg(seq: SeqNumber, ack: SeqNumber) -> TcpRepr<'static> {
    seg(seq, Some(ack), TcpFlags::empty(), &[])
}

fn with_sack<'a>(mut s: TcpRepr<'a>, blocks: &[(u32, u32)]) -> TcpRepr<'a> {
    for (i, &(l, r)) in blocks.iter().enumerate() {
        s.options.sack_blocks[i] = Some((SeqNumber(l), SeqNumber(r)));
    }
    s
}

fn established_with(cfg: Config) -> Connection {
    let mut c = Connection::blank(cfg, tuple(), ISS, 0, T0);
    c.state = State::Established;
    c.syn_unacked = false;
    c.snd_una = ISS + 1;
    c.snd_nxt = ISS + 1;
    c.snd_max = ISS + 1;
    c.snd_wnd = u32::from(WIN);
    c.max_snd_wnd = u32::from(WIN);
    c.snd_wl1 = IRS + 1;
    c.snd_wl2 = ISS + 1;
    c.irs = IRS;
    c.rcv_nxt = IRS + 1;
    c.rcv_rel = IRS + 1;
    c.rx_read = IRS + 1;
    c.rcv_adv = IRS + 1 + c.cfg.recv_buffer;
    c.last_ack_sent = IRS + 1;
    c.smss = 1000;
    c.rcv_ws = 0;
    c
}

fn established() -> Connection {
    established_with(cfg())
}

fn sack_established() -> Connection {
    let mut c = established();
    c.sack_ok = true;
    c
}

/// A segment we sent, owned.
#[derive(Debug, Clone, PartialEq)]
struct Out {
    seq: SeqNumber,
    ack: SeqNumber,
    flags: TcpFlags,
    win: u16,
    opts: TcpOptions,
    payload: Vec<u8>,
}

impl Out {
    fn sack(&self) -> Vec<(u32, u32)> {
        self.opts
            .sack_blocks
            .iter()
            .flatten()
            .map(|(l, r)| (l.0, r.0))
            .collect()
    }
}

#[track_caller]
fn recv(c: &mut Connection, t: Instant) -> Out {
    let mut buf = vec![0u8; 4096];
    let r = c.poll_transmit(t, &mut buf).expect("expected a segment");
    assert_eq!((r.src_port, r.dst_port), (LOCAL.port(), REMOTE.port()));
    Out {
        seq: r.seq_number,
        ack: r.ack_number,
        flags: r.flags,
        win: r.window_len,
        opts: r.options,
        payload: r.payload.to_vec(),
    }
}

#[track_caller]
fn recv_nothing(c: &mut Connection, t: Instant) {
    let mut buf = vec![0u8; 4096];
    if let Some(r) = c.poll_transmit(t, &mut buf) {
        panic!("expected no segment, got {r}");
    }
}

#[track_caller]
fn recv_all(c: &mut Connection, t: Instant) -> Vec<Out> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Some(r) = c.poll_transmit(t, &mut buf) {
        out.push(Out {
            seq: r.seq_number,
            ack: r.ack_number,
            flags: r.flags,
            win: r.window_len,
            opts: r.options,
            payload: r.payload.to_vec(),
        });
        assert!(out.len() < 10_000, "poll_transmit never stops");
    }
    out
}

fn events(c: &mut Connection) -> Vec<Event> {
    core::iter::from_fn(|| c.poll_event()).collect()
}

fn read_all(c: &mut Connection) -> Vec<u8> {
    let mut out = vec![0u8; 1 << 20];
    let n = c.recv(&mut out);
    out.truncate(n);
    out
}

const A: TcpFlags = TcpFlags::ACK;

// ----------------------------------------------------------------------
// Handshake.

#[test]
fn connect_sends_syn_with_options() {
    let cfg = Config {
        timestamps: true,
        ..cfg()
    };
    let secret = IsnSecret::new([1; 16]);
    let mut c = Connection::connect(cfg, tuple(), &secret, T0).unwrap();
    assert_eq!(c.state(), State::SynSent);
    let syn = recv(&mut c, T0);
    assert_eq!(syn.flags, TcpFlags::SYN);
    assert_eq!(syn.seq, c.iss());
    assert_eq!(syn.opts.mss, Some(1000));
    assert_eq!(syn.opts.window_scale, Some(0));
    assert!(syn.opts.sack_permitted);
    assert_eq!(syn.opts.timestamp.map(|t| t.tsecr), Some(0));
    assert_eq!(syn.win, WIN);
    recv_nothing(&mut c, T0);
    assert_eq!(c.poll_timeout(), Some(T0 + Duration::from_secs(1)));
}

fn syn_sent() -> Connection {
    let mut c = Connection::blank(cfg(), tuple(), ISS, 0, T0);
    c.state = State::SynSent;
    let _ = recv(&mut c, T0);
    c
}

#[test]
fn syn_sent_to_established() {
    let mut c = syn_sent();
    let mut synack = seg(IRS, Some(ISS + 1), TcpFlags::SYN, &[]);
    synack.options.mss = Some(1460);
    synack.options.window_scale = Some(7);
    synack.options.sack_permitted = true;
    c.handle_segment(T0 + ms(10), &synack);
    assert_eq!(c.state(), State::Established);
    assert_eq!(events(&mut c), [Event::Connected]);
    assert_eq!((c.snd_ws, c.rcv_ws, c.sack_ok, c.smss), (7, 0, true, 1000));
    assert_eq!(
        c.snd_wnd,
        u32::from(WIN),
        "the window of a SYN is not scaled"
    );
    let ack = recv(&mut c, T0 + ms(10));
    assert_eq!((ack.seq, ack.ack, ack.flags), (ISS + 1, IRS + 1, A));
    assert_eq!(c.srtt(), Some(ms(10)));
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn syn_sent_bad_ack_gets_rst() {
    let mut c = syn_sent();
    c.handle_segment(T0, &seg(IRS, Some(ISS + 5), TcpFlags::SYN, &[]));
    let rst = recv(&mut c, T0);
    assert_eq!((rst.seq, rst.flags), (ISS + 5, TcpFlags::RST));
    assert_eq!(c.state(), State::SynSent);
    // A RST with an unacceptable ACK is ignored; without ACK too.
    c.handle_segment(T0, &seg(IRS, Some(ISS + 5), TcpFlags::RST, &[]));
    c.handle_segment(T0, &seg(IRS, None, TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::SynSent);
    recv_nothing(&mut c, T0);
    // With an acceptable ACK it resets.
    c.handle_segment(T0, &seg(IRS, Some(ISS + 1), TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::Reset, Event::Closed]);
}

#[test]
fn simultaneous_open() {
    let mut c = syn_sent();
    c.handle_segment(T0, &seg(IRS, None, TcpFlags::SYN, &[]));
    assert_eq!(c.state(), State::SynReceived);
    let synack = recv(&mut c, T0);
    assert_eq!(
        (synack.seq, synack.ack, synack.flags),
        (ISS, IRS + 1, TcpFlags::SYN | A)
    );
    c.handle_segment(T0, &ack_seg(IRS + 1, ISS + 1));
    assert_eq!(c.state(), State::Established);
    assert_eq!(events(&mut c), [Event::Connected]);
}

#[test]
fn syn_retransmits_with_backoff_then_times_out() {
    let mut c = syn_sent();
    let mut t = T0;
    for i in 0..c.cfg.syn_retries {
        let deadline = c.poll_timeout().unwrap();
        assert_eq!(deadline - t, Duration::from_secs(1 << i));
        t = deadline;
        c.handle_timeout(t);
        let syn = recv(&mut c, t);
        assert_eq!((syn.seq, syn.flags), (ISS, TcpFlags::SYN));
    }
    c.handle_timeout(c.poll_timeout().unwrap());
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::TimedOut, Event::Closed]);
    assert_eq!(c.stats().retransmits, u64::from(c.cfg.syn_retries));
}

fn peer_syn() -> TcpRepr<'static> {
    let mut syn = seg(IRS, None, TcpFlags::SYN, &[]);
    syn.options.mss = Some(1460);
    syn.options.window_scale = Some(2);
    syn.options.sack_permitted = true;
    syn.options.timestamp = Some(TcpTimestamp {
        tsval: 777,
        tsecr: 0,
    });
    syn
}

#[test]
fn accept_answers_with_synack_then_establishes() {
    let cfg = Config {
        timestamps: true,
        recv_buffer: 256 * 1024,
        ..cfg()
    };
    let secret = IsnSecret::new([2; 16]);
    let mut c = Connection::accept(cfg, tuple(), &peer_syn(), &secret, T0).unwrap();
    assert_eq!(c.state(), State::SynReceived);
    let iss = c.iss();
    let sa = recv(&mut c, T0);
    assert_eq!(
        (sa.seq, sa.ack, sa.flags),
        (iss, IRS + 1, TcpFlags::SYN | A)
    );
    assert_eq!(sa.opts.window_scale, Some(3));
    assert!(sa.opts.sack_permitted);
    assert_eq!(sa.opts.timestamp.map(|t| t.tsecr), Some(777));
    assert_eq!(sa.win, 65535);
    // A duplicate SYN makes us send the SYN-ACK again.
    c.handle_segment(T0 + ms(5), &peer_syn());
    assert_eq!(recv(&mut c, T0 + ms(5)).flags, TcpFlags::SYN | A);
    // A bad ACK gets a RST and changes nothing.
    let mut bad = ack_seg(IRS + 1, iss + 7);
    bad.options.timestamp = Some(TcpTimestamp {
        tsval: 778,
        tsecr: 1,
    });
    c.handle_segment(T0 + ms(6), &bad);
    let rst = recv(&mut c, T0 + ms(6));
    assert_eq!((rst.seq, rst.flags), (iss + 7, TcpFlags::RST));
    assert_eq!(c.state(), State::SynReceived);
    let mut ok = ack_seg(IRS + 1, iss + 1);
    ok.options.timestamp = Some(TcpTimestamp {
        tsval: 779,
        tsecr: sa.opts.timestamp.unwrap().tsval,
    });
    ok.window_len = 1000;
    c.handle_segment(T0 + ms(7), &ok);
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.snd_wnd, 4000, "scaled by the peer's shift of 2");
    assert_eq!(events(&mut c), [Event::Connected]);
}

#[test]
fn accept_without_options_falls_back() {
    let syn = seg(IRS, None, TcpFlags::SYN, &[]);
    let mut c = Connection::accept(cfg(), tuple(), &syn, &IsnSecret::new([0; 16]), T0).unwrap();
    assert_eq!(
        (c.snd_ws, c.rcv_ws, c.sack_ok, c.ts_ok, c.smss),
        (0, 0, false, false, 536)
    );
    let sa = recv(&mut c, T0);
    assert_eq!(sa.opts.window_scale, None);
    assert!(!sa.opts.sack_permitted);
    assert_eq!(sa.opts.timestamp, None);
}

#[test]
fn accept_rejects_non_syn() {
    let s = IsnSecret::new([0; 16]);
    for flags in [
        TcpFlags::ACK,
        TcpFlags::SYN | TcpFlags::RST,
        TcpFlags::SYN | TcpFlags::FIN,
    ] {
        let bad = TcpRepr {
            flags,
            ..seg(IRS, None, TcpFlags::empty(), &[])
        };
        assert!(matches!(
            Connection::accept(cfg(), tuple(), &bad, &s, T0),
            Err(Error::NotASyn)
        ));
    }
}

#[test]
fn hostile_mss_is_clamped() {
    let mut syn = peer_syn();
    syn.options.mss = Some(1);
    let c = Connection::accept(cfg(), tuple(), &syn, &IsnSecret::new([0; 16]), T0).unwrap();
    assert_eq!(c.smss, MIN_PEER_MSS);
    // A shift above 14 is used as 14 (RFC 7323 (2.3)).
    let mut syn = peer_syn();
    syn.options.window_scale = Some(200);
    let c = Connection::accept(cfg(), tuple(), &syn, &IsnSecret::new([0; 16]), T0).unwrap();
    assert_eq!(c.snd_ws, 14);
}

// ----------------------------------------------------------------------
// Receiving.

#[test]
fn in_order_data_is_delivered_and_acked() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, b"hello"));
    assert_eq!(events(&mut c), [Event::Readable]);
    let ack = recv(&mut c, T0);
    assert_eq!((ack.seq, ack.ack, ack.win), (ISS + 1, IRS + 6, WIN - 5));
    assert_eq!(read_all(&mut c), b"hello");
    assert_eq!(c.read_point(), IRS + 6);
    assert_eq!(c.stats().bytes_in, 5);
}

#[test]
fn release_point_gates_the_ack_and_sacks_the_rest() {
    let mut c = established_with(Config {
        release: ReleaseMode::Manual,
        ..cfg()
    });
    c.sack_ok = true;
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, &[7; 1000]));
    assert_eq!(read_all(&mut c).len(), 1000, "delivered at once");
    let ack = recv(&mut c, T0);
    assert_eq!(ack.ack, IRS + 1, "not released: no cumulative ACK");
    assert_eq!(ack.sack(), [(IRS.0 + 1, IRS.0 + 1001)]);
    assert_eq!(ack.win, WIN, "window counted from the release point");
    c.release_to(IRS + 501).unwrap();
    let ack = recv(&mut c, T0);
    assert_eq!(ack.ack, IRS + 501);
    assert_eq!(ack.sack(), [(IRS.0 + 501, IRS.0 + 1001)]);
    assert_eq!(ack.ack + usize::from(ack.win), IRS + 501 + 64000);
    // Out of range.
    assert!(matches!(
        c.release_to(IRS + 400),
        Err(Error::ReleaseOutOfRange { .. })
    ));
    assert!(matches!(
        c.release_to(IRS + 1002),
        Err(Error::ReleaseOutOfRange { .. })
    ));
    c.release(500).unwrap();
    let ack = recv(&mut c, T0);
    assert_eq!((ack.ack, ack.sack()), (IRS + 1001, vec![]));
}

#[test]
fn small_release_waits_for_the_delayed_ack_timer() {
    let mut c = established_with(Config {
        release: ReleaseMode::Manual,
        delayed_ack: Some(ms(40)),
        ..cfg()
    });
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, &[7; 100]));
    recv_nothing(&mut c, T0);
    c.release(100).unwrap();
    recv_nothing(&mut c, T0);
    assert_eq!(c.poll_timeout(), Some(T0 + ms(40)));
    c.handle_timeout(T0 + ms(40));
    assert_eq!(recv(&mut c, T0 + ms(40)).ack, IRS + 101);
}

#[test]
fn window_right_edge_never_shrinks() {
    let mut c = established();
    let edge = IRS + 1 + 64000;
    let mut seq = IRS + 1;
    for _ in 0..40 {
        c.handle_segment(T0, &seg(seq, Some(ISS + 1), A, &[1; 1000]));
        seq += 1000;
        let ack = recv(&mut c, T0);
        assert_eq!(
            ack.ack + usize::from(ack.win),
            edge,
            "unread data closes the window"
        );
    }
    // Reading opens it again, with an update once less than half the buffer
    // was open: the edge moves right, never left.
    let _ = read_all(&mut c);
    let ack = recv(&mut c, T0);
    assert_eq!(ack.ack + usize::from(ack.win), seq + 64000);
    // A smaller buffer after the fact cannot pull the edge back.
    c.cfg.recv_buffer = 1000;
    c.ack_now = true;
    let ack = recv(&mut c, T0);
    assert_eq!(ack.ack + usize::from(ack.win), seq + 64000);
}

#[test]
fn scaled_window_rounds_up_rather_than_shrink() {
    let mut c = established();
    c.rcv_ws = 4;
    c.rcv_adv = IRS + 1 + 64000;
    // 64000 is a multiple of 16; after 7 bytes, 63993 is not.
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, &[1; 7]));
    let ack = recv(&mut c, T0);
    let edge = ack.ack + (usize::from(ack.win) << 4);
    assert!(edge >= IRS + 1 + 64000, "edge {edge}");
}

#[test]
fn out_of_order_data_is_sacked_then_reassembled() {
    let mut c = sack_established();
    c.handle_segment(T0, &seg(IRS + 1001, Some(ISS + 1), A, &[2; 1000]));
    assert_eq!(events(&mut c), []);
    let dup = recv(&mut c, T0);
    assert_eq!(
        (dup.ack, dup.sack()),
        (IRS + 1, vec![(IRS.0 + 1001, IRS.0 + 2001)])
    );
    c.handle_segment(T0, &seg(IRS + 3001, Some(ISS + 1), A, &[4; 500]));
    let dup = recv(&mut c, T0);
    assert_eq!(
        dup.sack(),
        [(IRS.0 + 3001, IRS.0 + 3501), (IRS.0 + 1001, IRS.0 + 2001)],
        "most recent block first"
    );
    // Fill the first hole: the ACK jumps over the SACKed range.
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, &[1; 1000]));
    let ack = recv(&mut c, T0);
    assert_eq!(
        (ack.ack, ack.sack()),
        (IRS + 2001, vec![(IRS.0 + 3001, IRS.0 + 3501)])
    );
    let data = read_all(&mut c);
    assert_eq!(data.len(), 2000);
    assert!(data[..1000].iter().all(|&b| b == 1) && data[1000..].iter().all(|&b| b == 2));
}

#[test]
fn overlapping_and_duplicate_segments() {
    let mut c = sack_established();
    c.handle_segment(T0, &seg(IRS + 101, Some(ISS + 1), A, &[b'b'; 100]));
    c.handle_segment(T0, &seg(IRS + 101, Some(ISS + 1), A, &[b'b'; 100]));
    c.handle_segment(T0, &seg(IRS + 151, Some(ISS + 1), A, &[b'b'; 100]));
    assert_eq!(c.ooo.iter().count(), 1);
    // Overlaps delivered data on the left and out-of-order data on the right.
    let mut mixed = vec![b'a'; 100];
    mixed.extend_from_slice(&[b'b'; 50]);
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, &mixed));
    assert_eq!(c.rcv_nxt(), IRS + 251);
    // An old duplicate entirely before rcv_nxt: unacceptable, ACKed.
    let _ = recv_all(&mut c, T0);
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, &[b'a'; 100]));
    assert_eq!(recv(&mut c, T0).ack, IRS + 251);
    assert_eq!(c.stats().unacceptable, 1);
    let data = read_all(&mut c);
    assert_eq!(&data[..100], &[b'a'; 100][..]);
    assert!(data[100..].iter().all(|&b| b == b'b'));
    assert_eq!(data.len(), 250);
}

#[test]
fn reassembly_bound_drops_and_does_not_sack() {
    let mut c = sack_established();
    for i in 0..=MAX_OOO_RANGES {
        let seq = IRS + 1 + 100 * (2 * i + 1);
        c.handle_segment(T0, &seg(seq, Some(ISS + 1), A, &[9; 100]));
    }
    assert_eq!(c.ooo.iter().count(), MAX_OOO_RANGES);
    assert_eq!(c.stats().ooo_dropped, 1);
    let last = IRS + 1 + 100 * (2 * MAX_OOO_RANGES + 1);
    let acks = recv_all(&mut c, T0);
    assert!(
        acks.iter()
            .all(|a| a.sack().iter().all(|&(l, _)| l != last.0))
    );
    // A segment inside an existing range is still fine.
    c.handle_segment(T0, &seg(IRS + 101, Some(ISS + 1), A, &[9; 50]));
    assert_eq!(c.stats().ooo_dropped, 1);
}

#[test]
fn zero_window_trims_and_answers() {
    let mut c = established_with(Config {
        recv_buffer: 1000,
        ..cfg()
    });
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, &[1; 1500]));
    let ack = recv(&mut c, T0);
    assert_eq!((ack.ack, ack.win), (IRS + 1001, 0), "trimmed to the window");
    // More data into the zero window: unacceptable, ACK with window 0.
    c.handle_segment(T0, &seg(IRS + 1001, Some(ISS + 1), A, &[1; 10]));
    let ack = recv(&mut c, T0);
    assert_eq!((ack.ack, ack.win), (IRS + 1001, 0));
    // A pure ACK at rcv_nxt is acceptable with a zero window.
    let before = c.stats().unacceptable;
    c.handle_segment(T0, &ack_seg(IRS + 1001, ISS + 1));
    assert_eq!(c.stats().unacceptable, before);
    // Reading reopens the window with an update.
    let _ = read_all(&mut c);
    let upd = recv(&mut c, T0);
    assert_eq!((upd.ack, upd.win), (IRS + 1001, 1000));
}

// ----------------------------------------------------------------------
// Sending.

#[test]
fn send_respects_mss_cwnd_and_peer_window() {
    let mut c = established();
    c.snd_wnd = 2500;
    assert_eq!(c.send(&[5; 5000]), 5000);
    let segs = recv_all(&mut c, T0);
    let lens: Vec<usize> = segs.iter().map(|s| s.payload.len()).collect();
    // 2500 bytes of window: two full segments and, by SWS avoidance (half
    // the largest window is 1250), not the 500-byte runt.
    assert_eq!(lens, [1000, 1000]);
    assert!(!segs[1].flags.contains(TcpFlags::PSH));
    assert_eq!(c.snd_max(), ISS + 2001);
    // The window opens: the rest goes, the last with PSH.
    let mut upd = ack_seg(IRS + 1, ISS + 2001);
    upd.window_len = 10000;
    c.handle_segment(T0 + ms(10), &upd);
    let segs = recv_all(&mut c, T0 + ms(10));
    let lens: Vec<usize> = segs.iter().map(|s| s.payload.len()).collect();
    assert_eq!(lens, [1000, 1000, 1000]);
    assert!(segs[2].flags.contains(TcpFlags::PSH));
    assert_eq!(events(&mut c), [Event::Acked]);
    assert_eq!(c.send_queue(), 3000);
}

#[test]
fn initial_window_limits_the_first_flight() {
    let mut c = established();
    c.snd_wnd = 1 << 20;
    c.send(&[0; 60000]);
    let segs = recv_all(&mut c, T0);
    assert_eq!(segs.len(), 10, "RFC 6928 initial window of 10 segments");
}

#[test]
fn nagle_holds_small_segments() {
    let mut c = established_with(Config {
        nodelay: false,
        ..cfg()
    });
    c.send(b"a");
    assert_eq!(recv(&mut c, T0).payload, b"a");
    c.send(b"b");
    recv_nothing(&mut c, T0);
    c.handle_segment(T0, &ack_seg(IRS + 1, ISS + 2));
    assert_eq!(recv(&mut c, T0).payload, b"b");
}

#[test]
fn retransmission_timeout_backs_off_then_gives_up() {
    let mut c = established();
    c.send(&[1; 3000]);
    assert_eq!(recv_all(&mut c, T0).len(), 3);
    let mut t = T0;
    for i in 0..c.cfg.max_retries {
        let deadline = c.poll_timeout().unwrap();
        let expect = (Duration::from_secs(1) * (1 << i)).min(c.cfg.rto_max);
        assert_eq!(deadline - t, expect, "timeout {i}");
        t = deadline;
        c.handle_timeout(t);
        let segs = recv_all(&mut c, t);
        assert_eq!(segs.len(), 1, "cwnd is one segment after a timeout");
        assert_eq!((segs[0].seq, segs[0].payload.len()), (ISS + 1, 1000));
    }
    c.handle_timeout(c.poll_timeout().unwrap());
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::TimedOut, Event::Closed]);
}

#[test]
fn timeout_recovery_goes_back_n_and_skips_sacked() {
    let mut c = sack_established();
    c.send(&[1; 5000]);
    assert_eq!(recv_all(&mut c, T0).len(), 5);
    c.handle_timeout(T0 + Duration::from_secs(1));
    let t = T0 + Duration::from_secs(1);
    assert_eq!(recv(&mut c, t).seq, ISS + 1);
    recv_nothing(&mut c, t);
    // The peer got segment 1 (retransmitted) and had segment 3 all along.
    let s = with_sack(
        ack_seg(IRS + 1, ISS + 1001),
        &[(ISS.0 + 2001, ISS.0 + 3001)],
    );
    c.handle_segment(t + ms(10), &s);
    let segs = recv_all(&mut c, t + ms(10));
    let seqs: Vec<SeqNumber> = segs.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [ISS + 1001, ISS + 3001], "segment 3 is skipped");
}

#[test]
fn sack_loss_detection_retransmits_the_hole() {
    let mut c = sack_established();
    c.send(&[1; 8000]);
    assert_eq!(recv_all(&mut c, T0).len(), 8);
    // Segment 1 lost; 2, 3, 4 SACKed (3 * 1000 > (3 - 1) * SMSS).
    for k in 2..=4u32 {
        let s = with_sack(
            ack_seg(IRS + 1, ISS + 1),
            &[(ISS.0 + 1001, ISS.0 + 1 + 1000 * k)],
        );
        c.handle_segment(T0 + ms(10), &s);
    }
    assert_eq!(c.recovery, Recovery::Fast);
    assert_eq!(c.stats().recoveries, 1);
    let segs = recv_all(&mut c, T0 + ms(10));
    assert_eq!(segs[0].seq, ISS + 1, "the hole first");
    assert_eq!(segs[0].payload.len(), 1000);
    assert!(
        segs.iter().skip(1).all(|s| s.seq >= ISS + 8001),
        "then only new data"
    );
    // Full ACK ends recovery with cwnd = ssthresh.
    c.handle_segment(T0 + ms(20), &ack_seg(IRS + 1, c.snd_max()));
    assert_eq!(c.recovery, Recovery::Open);
    assert_eq!(c.cwnd(), c.cc.ssthresh);
}

#[test]
fn newreno_fast_retransmit_on_three_dupacks() {
    let mut c = established();
    c.send(&[1; 6000]);
    assert_eq!(recv_all(&mut c, T0).len(), 6);
    for _ in 0..2 {
        c.handle_segment(T0 + ms(10), &ack_seg(IRS + 1, ISS + 1));
    }
    recv_nothing(&mut c, T0 + ms(10));
    c.handle_segment(T0 + ms(10), &ack_seg(IRS + 1, ISS + 1));
    assert_eq!(c.recovery, Recovery::Fast);
    let rx = recv(&mut c, T0 + ms(10));
    assert_eq!((rx.seq, rx.payload.len()), (ISS + 1, 1000));
    // Partial ACK: the next hole is retransmitted (RFC 6582 (3.2) step 5).
    c.handle_segment(T0 + ms(20), &ack_seg(IRS + 1, ISS + 2001));
    let rx = recv(&mut c, T0 + ms(20));
    assert_eq!(rx.seq, ISS + 2001);
}

#[test]
fn sack_blocks_out_of_range_are_ignored() {
    let mut c = sack_established();
    c.send(&[1; 2000]);
    let _ = recv_all(&mut c, T0);
    let s = with_sack(
        ack_seg(IRS + 1, ISS + 1),
        &[
            (ISS.0 + 1001, ISS.0 + 9001), // past snd_max
            (ISS.0 + 1501, ISS.0 + 1001), // inverted
            (ISS.0 - 100, ISS.0 + 1),     // D-SACK below the ACK
            (ISS.0 + 1001, ISS.0 + 1501), // fine
        ],
    );
    c.handle_segment(T0, &s);
    assert_eq!(c.stats().sack_blocks_invalid, 2);
    assert_eq!(
        c.sacked.iter().collect::<Vec<_>>(),
        [(ISS + 1001, ISS + 1501)]
    );
}

#[test]
fn zero_window_probe_then_resume() {
    let mut c = established();
    c.snd_wnd = 0;
    c.send(b"data");
    recv_nothing(&mut c, T0);
    let probe_at = c.poll_timeout().expect("persist timer");
    assert_eq!(probe_at - T0, Duration::from_secs(1));
    c.handle_timeout(probe_at);
    let probe = recv(&mut c, probe_at);
    assert_eq!(
        (probe.seq, probe.payload.len()),
        (ISS, 0),
        "old sequence number, no data"
    );
    assert_eq!(c.stats().window_probes, 1);
    let next = c.poll_timeout().unwrap();
    assert_eq!(next - probe_at, Duration::from_secs(2), "probes back off");
    let mut open = ack_seg(IRS + 1, ISS + 1);
    open.window_len = 100;
    c.handle_segment(next, &open);
    assert_eq!(recv(&mut c, next).payload, b"data");
}

#[test]
fn keepalive_probes_then_times_out() {
    let ka = Keepalive {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        probes: 2,
    };
    let mut c = established_with(Config {
        keepalive: Some(ka),
        ..cfg()
    });
    c.handle_segment(T0, &ack_seg(IRS + 1, ISS + 1));
    assert_eq!(c.poll_timeout(), Some(T0 + Duration::from_secs(60)));
    let t1 = T0 + Duration::from_secs(60);
    c.handle_timeout(t1);
    assert_eq!(recv(&mut c, t1).seq, ISS);
    // Answered: idle timer starts again.
    c.handle_segment(t1 + ms(5), &ack_seg(IRS + 1, ISS + 1));
    assert_eq!(c.poll_timeout(), Some(t1 + ms(5) + Duration::from_secs(60)));
    // Unanswered twice: timed out.
    let t2 = c.poll_timeout().unwrap();
    c.handle_timeout(t2);
    assert_eq!(recv(&mut c, t2).seq, ISS);
    let t3 = c.poll_timeout().unwrap();
    assert_eq!(t3 - t2, Duration::from_secs(10));
    c.handle_timeout(t3);
    assert_eq!(recv(&mut c, t3).seq, ISS);
    c.handle_timeout(c.poll_timeout().unwrap());
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.stats().keepalives, 3);
    assert_eq!(events(&mut c), [Event::TimedOut, Event::Closed]);
}

// ----------------------------------------------------------------------
// Closing.

#[test]
fn active_close_through_time_wait() {
    let mut c = established();
    c.send(b"bye");
    c.close();
    assert_eq!(c.state(), State::FinWait1);
    assert_eq!(c.send(b"more"), 0);
    let fin = recv(&mut c, T0);
    assert_eq!((fin.seq, fin.payload.as_slice()), (ISS + 1, &b"bye"[..]));
    assert!(fin.flags.contains(TcpFlags::FIN | TcpFlags::PSH | A));
    c.handle_segment(T0, &ack_seg(IRS + 1, ISS + 5));
    assert_eq!(c.state(), State::FinWait2);
    // Data still comes in while half closed.
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 5), A, b"late"));
    assert_eq!(recv(&mut c, T0).ack, IRS + 5);
    c.handle_segment(T0, &seg(IRS + 5, Some(ISS + 5), TcpFlags::FIN, &[]));
    assert_eq!(c.state(), State::TimeWait);
    assert_eq!(recv(&mut c, T0).ack, IRS + 6);
    assert_eq!(c.poll_timeout(), Some(T0 + Duration::from_secs(60)));
    // A retransmitted FIN is ACKed again and restarts the timer.
    c.handle_segment(
        T0 + ms(100),
        &seg(IRS + 5, Some(ISS + 5), TcpFlags::FIN, &[]),
    );
    assert_eq!(recv(&mut c, T0 + ms(100)).ack, IRS + 6);
    assert_eq!(
        c.poll_timeout(),
        Some(T0 + ms(100) + Duration::from_secs(60))
    );
    c.handle_timeout(c.poll_timeout().unwrap());
    assert_eq!(c.state(), State::Closed);
    assert_eq!(
        events(&mut c),
        [
            Event::Readable,
            Event::Acked,
            Event::PeerClosed,
            Event::Closed
        ]
    );
}

#[test]
fn fin_acked_together_with_peer_fin_goes_to_time_wait() {
    let mut c = established();
    c.close();
    let _ = recv(&mut c, T0);
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 2), TcpFlags::FIN, &[]));
    assert_eq!(c.state(), State::TimeWait);
}

#[test]
fn passive_close_through_last_ack() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), TcpFlags::FIN, b"end"));
    assert_eq!(c.state(), State::CloseWait);
    assert_eq!(events(&mut c), [Event::Readable, Event::PeerClosed]);
    assert_eq!(recv(&mut c, T0).ack, IRS + 5);
    // We may still send.
    c.send(b"reply");
    c.close();
    assert_eq!(c.state(), State::LastAck);
    let fin = recv(&mut c, T0);
    assert!(fin.flags.contains(TcpFlags::FIN));
    assert_eq!(fin.payload, b"reply");
    c.handle_segment(T0, &ack_seg(IRS + 5, ISS + 7));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::Acked, Event::Closed]);
}

#[test]
fn simultaneous_close_through_closing() {
    let mut c = established();
    c.close();
    let fin = recv(&mut c, T0);
    assert_eq!(fin.flags, TcpFlags::FIN | A);
    // The peer's FIN crosses ours (it does not ACK our FIN).
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), TcpFlags::FIN, &[]));
    assert_eq!(c.state(), State::Closing);
    assert_eq!(recv(&mut c, T0).ack, IRS + 2);
    c.handle_segment(T0, &ack_seg(IRS + 2, ISS + 2));
    assert_eq!(c.state(), State::TimeWait);
}

#[test]
fn fin_is_retransmitted_on_timeout() {
    let mut c = established();
    c.close();
    let _ = recv(&mut c, T0);
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    let fin = recv(&mut c, t);
    assert_eq!((fin.seq, fin.flags), (ISS + 1, TcpFlags::FIN | A));
}

#[test]
fn out_of_order_fin_waits_for_the_gap() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 6, Some(ISS + 1), TcpFlags::FIN, b"world"));
    assert_eq!(c.state(), State::Established);
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, b"hello"));
    assert_eq!(c.state(), State::CloseWait);
    assert_eq!(read_all(&mut c), b"helloworld");
    let acks = recv_all(&mut c, T0);
    assert_eq!(acks.last().unwrap().ack, IRS + 12);
}

#[test]
fn unreleased_fin_is_not_acked() {
    let mut c = established_with(Config {
        release: ReleaseMode::Manual,
        ..cfg()
    });
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), TcpFlags::FIN, b"x"));
    assert_eq!(c.state(), State::CloseWait);
    assert_eq!(recv(&mut c, T0).ack, IRS + 1);
    c.release(1).unwrap();
    assert_eq!(recv(&mut c, T0).ack, IRS + 2);
    c.release_to(c.rcv_nxt()).unwrap();
    assert_eq!(recv(&mut c, T0).ack, IRS + 3);
}

#[test]
fn abort_sends_rst() {
    let mut c = established();
    c.abort();
    let rst = recv(&mut c, T0);
    assert_eq!((rst.seq, rst.flags), (ISS + 1, TcpFlags::RST));
    assert_eq!(c.state(), State::Closed);
    // A closed connection answers like RFC 9293 CLOSED.
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, b"x"));
    let rst = recv(&mut c, T0);
    assert_eq!((rst.seq, rst.flags), (ISS + 1, TcpFlags::RST));
}

// ----------------------------------------------------------------------
// Hostile and malformed segments (RFC 5961, RFC 7323, RFC 9293).

#[test]
fn rst_exactly_at_rcv_nxt_resets() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 1, None, TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::Reset, Event::Closed]);
    recv_nothing(&mut c, T0);
}

#[test]
fn rst_at_the_release_point_resets_while_bytes_and_fin_are_unreleased() {
    // The peer sent data and a FIN, then closed: it answers our segments,
    // whose ACK is the release point, with a RST carrying that number.
    let mut c = established_with(Config {
        release: ReleaseMode::Manual,
        ..cfg()
    });
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), TcpFlags::FIN, b"request"));
    assert_eq!(c.state(), State::CloseWait);
    assert_eq!(recv(&mut c, T0).ack, IRS + 1);
    assert_eq!(c.rcv_nxt(), IRS + 9);
    let _ = events(&mut c);
    c.handle_segment(T0, &seg(IRS + 1, None, TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::Reset, Event::Closed]);
}

#[test]
fn rst_between_the_release_point_and_rcv_nxt_is_dropped() {
    let mut c = established_with(Config {
        release: ReleaseMode::Manual,
        ..cfg()
    });
    c.handle_segment(
        T0,
        &seg(IRS + 1, Some(ISS + 1), TcpFlags::empty(), b"request"),
    );
    let _ = recv_all(&mut c, T0);
    let _ = events(&mut c);
    c.handle_segment(T0, &seg(IRS + 4, None, TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::Established);
    assert!(events(&mut c).is_empty());
}

#[test]
fn rst_in_window_gets_a_challenge_ack() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 500, None, TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::Established);
    let ch = recv(&mut c, T0);
    assert_eq!((ch.seq, ch.ack, ch.flags), (ISS + 1, IRS + 1, A));
    assert_eq!(c.stats().challenge_acks, 1);
    // The peer answers the challenge with a RST at our ACK number.
    c.handle_segment(T0, &seg(IRS + 1, None, TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn rst_out_of_window_is_dropped() {
    let mut c = established();
    for seq in [IRS, IRS + 70_000, IRS - 5000] {
        c.handle_segment(T0, &seg(seq, None, TcpFlags::RST, &[]));
    }
    assert_eq!(c.state(), State::Established);
    recv_nothing(&mut c, T0);
}

#[test]
fn rst_with_unreleased_data_accepts_release_point_and_rcv_nxt() {
    let mut c = established_with(Config {
        release: ReleaseMode::Manual,
        ..cfg()
    });
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), A, &[0; 100]));
    let _ = recv_all(&mut c, T0);
    c.handle_segment(T0, &seg(IRS + 101, None, TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn syn_in_synchronized_state_gets_a_challenge_ack() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 1, None, TcpFlags::SYN, &[]));
    assert_eq!(c.state(), State::Established);
    assert_eq!(recv(&mut c, T0).flags, A);
    assert_eq!(c.stats().challenge_acks, 1);
}

#[test]
fn ack_of_unsent_data_is_challenged_and_dropped() {
    let mut c = established();
    c.send(&[1; 100]);
    let _ = recv_all(&mut c, T0);
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 5000), A, b"data"));
    assert_eq!(c.stats().acks_of_unsent, 1);
    assert_eq!(c.snd_una(), ISS + 1);
    assert_eq!(c.rcv_nxt(), IRS + 1, "its data is dropped too");
    assert_eq!(recv(&mut c, T0).ack, IRS + 1);
}

#[test]
fn too_old_ack_is_dropped() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS - 100_000), A, b"data"));
    assert_eq!(c.stats().acks_too_old, 1);
    assert_eq!(c.rcv_nxt(), IRS + 1);
}

#[test]
fn unacceptable_segment_gets_an_ack() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 100_000, Some(ISS + 1), A, b"far"));
    assert_eq!(c.stats().unacceptable, 1);
    let ack = recv(&mut c, T0);
    assert_eq!((ack.seq, ack.ack), (ISS + 1, IRS + 1));
}

#[test]
fn challenge_acks_are_rate_limited() {
    let mut c = established();
    for _ in 0..50 {
        c.handle_segment(T0, &seg(IRS + 500, None, TcpFlags::RST, &[]));
    }
    assert_eq!(
        c.stats().challenge_acks,
        u64::from(c.cfg.challenge_ack_limit)
    );
    c.handle_segment(
        T0 + Duration::from_secs(1),
        &seg(IRS + 500, None, TcpFlags::RST, &[]),
    );
    assert_eq!(
        c.stats().challenge_acks,
        u64::from(c.cfg.challenge_ack_limit) + 1
    );
}

#[test]
fn paws_drops_old_timestamps() {
    let mut c = established();
    c.ts_ok = true;
    c.ts_recent = 1000;
    let mut s = seg(IRS + 1, Some(ISS + 1), A, b"old");
    s.options.timestamp = Some(TcpTimestamp {
        tsval: 999,
        tsecr: 0,
    });
    c.handle_segment(T0, &s);
    assert_eq!(c.stats().paws_drops, 1);
    assert_eq!(c.rcv_nxt(), IRS + 1);
    let ack = recv(&mut c, T0);
    assert_eq!(ack.opts.timestamp.map(|t| t.tsecr), Some(1000));
    // Newer timestamp: accepted, and echoed from now on.
    s.options.timestamp = Some(TcpTimestamp {
        tsval: 1001,
        tsecr: 0,
    });
    c.handle_segment(T0, &s);
    assert_eq!(c.rcv_nxt(), IRS + 4);
    assert_eq!(recv(&mut c, T0).opts.timestamp.map(|t| t.tsecr), Some(1001));
    // Wrapping: 2^31 - 1 ahead is newer.
    s.seq_number = IRS + 4;
    s.options.timestamp = Some(TcpTimestamp {
        tsval: 1001u32.wrapping_add(0x7fff_ffff),
        tsecr: 0,
    });
    c.handle_segment(T0, &s);
    assert_eq!(c.stats().paws_drops, 1);
}

#[test]
fn lagging_release_point_does_not_freeze_the_echoed_timestamp() {
    // RFC 7323 R3 takes TS.Recent only from segments at or below the last
    // ACK sent. With a release point that lags what arrived, in-order
    // segments all start past it: TS.Recent would stay at the first one for
    // as long as the lag lasts, and the peer's RTT samples (its RTO) grow
    // with the connection's age.
    let mut c = established_with(Config {
        release: ReleaseMode::Manual,
        ..cfg()
    });
    c.ts_ok = true;
    c.ts_recent = 100;
    let data = [7u8; 1000];
    let seg_at = |k: usize, tsval: u32| {
        let mut s = seg(IRS + 1 + k * 1000, Some(ISS + 1), A, &data);
        s.options.timestamp = Some(TcpTimestamp { tsval, tsecr: 0 });
        s
    };
    let tsecr = |o: &Out| o.opts.timestamp.map(|t| t.tsecr);
    // At the ACK sent last: R3 as usual.
    c.handle_segment(T0, &seg_at(0, 101));
    assert_eq!(tsecr(&recv(&mut c, T0)), Some(101));
    // Past it (held): not echoed yet.
    c.handle_segment(T0, &seg_at(1, 102));
    c.handle_segment(T0, &seg_at(2, 103));
    assert_eq!(tsecr(&recv(&mut c, T0)), Some(101));
    // The release covers the first byte of the first held segment: the
    // ACK that releases it still echoes the older TSval (it acknowledges
    // older bytes too), the next one that segment's.
    c.release_to(IRS + 1501).unwrap();
    let ack = recv(&mut c, T0);
    assert_eq!((ack.ack, tsecr(&ack)), (IRS + 1501, Some(101)));
    c.handle_segment(T0, &seg_at(3, 104));
    let ack = recv(&mut c, T0);
    assert_eq!((ack.ack, tsecr(&ack)), (IRS + 1501, Some(102)));
    // And so on while the lag lasts; never backwards.
    c.release_to(IRS + 3001).unwrap();
    assert_eq!(tsecr(&recv(&mut c, T0)), Some(102));
    c.release_to(IRS + 4001).unwrap();
    assert_eq!(tsecr(&recv(&mut c, T0)), Some(104));
    c.handle_segment(T0, &seg_at(4, 105));
    assert_eq!(tsecr(&recv(&mut c, T0)), Some(105));
}

#[test]
fn window_shrink_is_counted_and_respected() {
    let mut c = established();
    c.send(&[1; 3000]);
    let _ = recv_all(&mut c, T0);
    let mut shrink = ack_seg(IRS + 2, ISS + 1001);
    shrink.window_len = 500;
    c.handle_segment(T0, &shrink);
    assert_eq!(c.stats().window_shrinks_seen, 1);
    assert_eq!(c.snd_wnd, 500);
    recv_nothing(&mut c, T0);
}

#[test]
fn misdirected_segments_are_ignored() {
    let mut c = established();
    let mut s = seg(IRS + 1, Some(ISS + 1), A, b"x");
    s.src_port = 1;
    c.handle_segment(T0, &s);
    assert_eq!((c.stats().misdirected, c.rcv_nxt()), (1, IRS + 1));
}

#[test]
fn segment_without_ack_is_dropped() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 1, None, TcpFlags::PSH, b"x"));
    assert_eq!(c.rcv_nxt(), IRS + 1);
    recv_nothing(&mut c, T0);
}

#[test]
fn data_after_peer_fin_is_ignored() {
    let mut c = established();
    c.handle_segment(T0, &seg(IRS + 1, Some(ISS + 1), TcpFlags::FIN, &[]));
    let _ = recv_all(&mut c, T0);
    c.handle_segment(T0, &seg(IRS + 2, Some(ISS + 1), A, b"zombie"));
    assert_eq!(c.rcv_nxt(), IRS + 2);
    assert_eq!(read_all(&mut c), b"");
}

/// xorshift for the randomized tests.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[track_caller]
fn check_invariants(c: &Connection, edge_before: SeqNumber) {
    assert!(c.snd_una <= c.snd_nxt && c.snd_nxt <= c.snd_max, "{c:?}");
    assert!(c.rcv_rel <= c.rcv_nxt, "{c:?}");
    assert!(c.rcv_adv >= edge_before, "right edge moved back: {c:?}");
    assert!(
        c.rx.len()
            == span(c.rx_read, c.rcv_nxt) - usize::from(c.rcv_fin.is_some_and(|f| f < c.rcv_nxt))
    );
    assert!(c.tx.len() <= c.cfg.send_buffer);
}

#[test]
fn random_hostile_segments_never_panic() {
    let mut rng = 0x1234_5678_9abc_def1u64;
    for round in 0..200 {
        let mut c = if round % 2 == 0 {
            sack_established()
        } else {
            established()
        };
        c.ts_ok = round % 3 == 0;
        c.rcv_ws = (round % 5) as u8;
        c.send(&[3; 20_000]);
        let mut t = T0;
        let mut payload = vec![0u8; 3000];
        for _ in 0..300 {
            let r = next(&mut rng);
            let near = |x: SeqNumber, r: u64| x + (r % 80_000) as usize - 40_000;
            let len = (next(&mut rng) % 2500) as usize;
            for b in payload.iter_mut().take(len) {
                *b = next(&mut rng) as u8;
            }
            let mut s = seg(
                if r & 1 == 0 {
                    near(c.rcv_nxt, next(&mut rng))
                } else {
                    SeqNumber(next(&mut rng) as u32)
                },
                Some(if r & 2 == 0 {
                    near(c.snd_una, next(&mut rng))
                } else {
                    SeqNumber(next(&mut rng) as u32)
                }),
                TcpFlags((next(&mut rng) & 0x3f) as u8),
                &payload[..len],
            );
            if r & 4 == 0 {
                s.flags = TcpFlags((next(&mut rng) & 0xff) as u8);
            }
            s.window_len = next(&mut rng) as u16;
            if r & 8 == 0 {
                let l = near(c.snd_una, next(&mut rng));
                s.options.sack_blocks = [
                    Some((l, l + (next(&mut rng) % 5000) as usize)),
                    None,
                    None,
                    None,
                ];
            }
            if r & 16 == 0 {
                s.options.timestamp = Some(TcpTimestamp {
                    tsval: next(&mut rng) as u32,
                    tsecr: next(&mut rng) as u32,
                });
            }
            let edge = c.rcv_adv;
            c.handle_segment(t, &s);
            check_invariants(&c, edge);
            if r & 32 == 0 {
                let _ = read_all(&mut c);
                let _ = c.release_to(c.rcv_nxt());
            }
            let edge = c.rcv_adv;
            let _ = recv_all(&mut c, t);
            check_invariants(&c, edge);
            t += ms(next(&mut rng) % 300);
            if c.poll_timeout().is_some_and(|d| d <= t) {
                c.handle_timeout(t);
            }
            if c.state() == State::Closed {
                break;
            }
        }
    }
}

#[test]
fn close_during_the_handshake() {
    // SYN-SENT: just closes.
    let mut c = syn_sent();
    c.close();
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::Closed]);
    recv_nothing(&mut c, T0);
    // SYN-RECEIVED: the FIN follows once the handshake completes.
    let mut c =
        Connection::accept(cfg(), tuple(), &peer_syn(), &IsnSecret::new([0; 16]), T0).unwrap();
    let iss = c.iss();
    let _ = recv(&mut c, T0);
    c.close();
    assert_eq!(c.state(), State::SynReceived);
    recv_nothing(&mut c, T0);
    c.handle_segment(T0, &ack_seg(IRS + 1, iss + 1));
    assert_eq!(c.state(), State::FinWait1);
    let fin = recv(&mut c, T0);
    assert_eq!((fin.seq, fin.flags), (iss + 1, TcpFlags::FIN | A));
    c.handle_segment(T0, &ack_seg(IRS + 1, iss + 2));
    assert_eq!(c.state(), State::FinWait2);
}

#[test]
fn rst_in_syn_received_closes() {
    let mut c =
        Connection::accept(cfg(), tuple(), &peer_syn(), &IsnSecret::new([0; 16]), T0).unwrap();
    let _ = recv(&mut c, T0);
    // In window but not exact: challenge ACK (RFC 5961 applies here too).
    c.handle_segment(T0, &seg(IRS + 10, None, TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::SynReceived);
    c.handle_segment(T0, &seg(IRS + 1, None, TcpFlags::RST, &[]));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), [Event::Reset, Event::Closed]);
}

#[test]
fn data_with_the_handshake_ack_is_delivered() {
    let mut c =
        Connection::accept(cfg(), tuple(), &peer_syn(), &IsnSecret::new([0; 16]), T0).unwrap();
    let iss = c.iss();
    let _ = recv(&mut c, T0);
    c.handle_segment(T0, &seg(IRS + 1, Some(iss + 1), TcpFlags::PSH, b"GET /"));
    assert_eq!(c.state(), State::Established);
    assert_eq!(events(&mut c), [Event::Connected, Event::Readable]);
    assert_eq!(read_all(&mut c), b"GET /");
    assert_eq!(recv(&mut c, T0).ack, IRS + 6);
}

#[test]
fn keepalive_starts_with_the_connection() {
    let ka = Keepalive {
        idle: Duration::from_secs(30),
        interval: Duration::from_secs(5),
        probes: 1,
    };
    let mut c = Connection::blank(
        Config {
            keepalive: Some(ka),
            ..cfg()
        },
        tuple(),
        ISS,
        0,
        T0,
    );
    c.state = State::SynSent;
    let _ = recv(&mut c, T0);
    c.handle_segment(T0 + ms(10), &seg(IRS, Some(ISS + 1), TcpFlags::SYN, &[]));
    assert_eq!(
        c.poll_timeout(),
        Some(T0 + ms(10) + Duration::from_secs(30))
    );
    let syn = seg(IRS, None, TcpFlags::SYN, &[]);
    let mut c = Connection::accept(
        Config {
            keepalive: Some(ka),
            ..cfg()
        },
        tuple(),
        &syn,
        &IsnSecret::new([0; 16]),
        T0,
    )
    .unwrap();
    let iss = c.iss();
    let _ = recv(&mut c, T0);
    c.handle_segment(T0 + ms(10), &ack_seg(IRS + 1, iss + 1));
    assert_eq!(
        c.poll_timeout(),
        Some(T0 + ms(10) + Duration::from_secs(30))
    );
}
