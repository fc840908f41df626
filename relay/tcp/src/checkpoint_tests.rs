use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use relay_wire::{SeqNumber, TcpFlags, TcpOptions, TcpRepr, TcpTimestamp};

use super::*;
use crate::config::ReleaseMode;

const T0: Instant = Instant::from_secs(100);
const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443);
const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000);
const IRS: SeqNumber = SeqNumber(77);

fn cfg() -> Config {
    Config {
        mss: 1000,
        recv_buffer: 64000,
        send_buffer: 64000,
        delayed_ack: None,
        release: ReleaseMode::Manual,
        ..Config::default()
    }
}

fn seg<'a>(
    seq: SeqNumber,
    ack: SeqNumber,
    flags: TcpFlags,
    tsval: u32,
    payload: &'a [u8],
) -> TcpRepr<'a> {
    TcpRepr {
        src_port: REMOTE.port(),
        dst_port: LOCAL.port(),
        seq_number: seq,
        ack_number: ack,
        flags: flags | TcpFlags::ACK,
        window_len: 64000,
        options: TcpOptions {
            timestamp: Some(TcpTimestamp { tsval, tsecr: 0 }),
            ..TcpOptions::default()
        },
        payload,
    }
}

/// An established connection (via a real handshake) with some traffic.
fn busy() -> Connection {
    let tuple = FourTuple::new(LOCAL, REMOTE);
    let mut syn = seg(IRS, SeqNumber(0), TcpFlags::SYN, 5, &[]);
    syn.flags = TcpFlags::SYN;
    syn.options.window_scale = Some(7);
    syn.options.mss = Some(1012);
    syn.options.sack_permitted = true;
    let secret = crate::isn::IsnSecret::new([3; 16]);
    let mut c = Connection::accept(cfg(), tuple, &syn, &secret, T0).unwrap();
    let mut buf = [0u8; 2048];
    let _ = c.poll_transmit(T0, &mut buf).unwrap();
    let iss = c.iss();
    c.handle_segment(
        T0 + Duration::from_millis(3),
        &seg(IRS + 1, iss + 1, TcpFlags::empty(), 6, &[]),
    );
    assert_eq!(c.state(), State::Established);
    c.send(&[1; 5000]);
    while c.poll_transmit(T0, &mut buf).is_some() {}
    c.handle_segment(
        T0 + Duration::from_millis(10),
        &seg(IRS + 1, iss + 2001, TcpFlags::empty(), 7, b"hello"),
    );
    c.release(3).unwrap();
    while c
        .poll_transmit(T0 + Duration::from_millis(10), &mut buf)
        .is_some()
    {}
    c
}

#[test]
fn roundtrip_and_size() {
    let c = busy();
    let ck = c.export_checkpoint().unwrap();
    assert_eq!(ck.snd_una, c.iss() + 2001);
    assert_eq!(ck.snd_max, c.iss() + 5001);
    assert_eq!(ck.rcv_rel, IRS + 4, "the release point, not rcv_nxt");
    assert!(ck.ws_ok && ck.sack_ok && ck.ts_ok);
    assert_eq!((ck.snd_ws, ck.ts_recent, ck.smss), (7, 7, 1000));
    let bytes = ck.to_bytes();
    assert_eq!(bytes.len(), CHECKPOINT_LEN);
    assert_eq!(CHECKPOINT_LEN, 96);
    assert_eq!(Checkpoint::from_bytes(&bytes).unwrap(), ck);
}

#[test]
fn bad_bytes_are_typed_errors() {
    let ck = busy().export_checkpoint().unwrap();
    let bytes = ck.to_bytes();
    assert!(matches!(
        Checkpoint::from_bytes(&bytes[..3]),
        Err(Error::CheckpointTruncated { .. })
    ));
    assert!(matches!(
        Checkpoint::from_bytes(&bytes[..50]),
        Err(Error::CheckpointTruncated { .. })
    ));
    let mut b = bytes.clone();
    b[0] = b'X';
    assert_eq!(Checkpoint::from_bytes(&b), Err(Error::CheckpointMagic));
    let mut b = bytes.clone();
    b[4] = 99;
    assert_eq!(
        Checkpoint::from_bytes(&b),
        Err(Error::CheckpointVersion(99))
    );
    let mut b = bytes.clone();
    b.push(0);
    assert!(matches!(
        Checkpoint::from_bytes(&b),
        Err(Error::CheckpointInvalid(_))
    ));
    // State byte 0 is CLOSED: not importable.
    let mut b = bytes.clone();
    b[5] = 0;
    assert_eq!(
        Checkpoint::from_bytes(&b),
        Err(Error::CheckpointInvalid("state is not synchronized"))
    );
    b[5] = 200;
    assert_eq!(
        Checkpoint::from_bytes(&b),
        Err(Error::CheckpointInvalid("unknown state"))
    );
    // Every single-byte corruption decodes or fails cleanly, never panics.
    for i in 0..bytes.len() {
        for v in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            if let Ok(c) = Checkpoint::from_bytes(&b) {
                c.validate().unwrap();
            }
        }
    }
}

#[test]
fn invariants_are_checked() {
    let ck = busy().export_checkpoint().unwrap();
    let bad = |f: &dyn Fn(&mut Checkpoint)| {
        let mut c = ck.clone();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(bad(&|c| c.snd_ws = 15).to_string().contains("shift"));
    assert!(
        bad(&|c| c.snd_max = c.snd_una - 1)
            .to_string()
            .contains("snd_una")
    );
    assert!(
        bad(&|c| c.rcv_adv = c.rcv_rel - 1)
            .to_string()
            .contains("rcv_adv")
    );
    assert!(bad(&|c| c.smss = 10).to_string().contains("smss"));
    assert!(
        bad(&|c| c.state = State::FinWait1)
            .to_string()
            .contains("snd_fin")
    );
    assert!(
        bad(&|c| c.snd_fin = Some(c.snd_una))
            .to_string()
            .contains("snd_fin")
    );
    assert!(bad(&|c| c.cwnd = 0).to_string().contains("cwnd"));
    assert!(bad(&|c| c.ws_ok = false).to_string().contains("scaling"));
}

#[test]
fn deltas_are_small_and_exact() {
    let mut c = busy();
    let base = c.export_checkpoint().unwrap();
    let d0 = c.export_delta(&base).unwrap();
    assert!(d0.len() <= 10, "no change: {} bytes", d0.len());
    assert_eq!(base.apply(&d0).unwrap(), base);
    let iss = c.iss();
    c.handle_segment(
        T0 + Duration::from_millis(20),
        &seg(IRS + 6, iss + 4001, TcpFlags::empty(), 8, b"more"),
    );
    c.release_to(c.rcv_nxt()).unwrap();
    let now = c.export_checkpoint().unwrap();
    let d = now.delta_from(&base);
    assert!(d.len() < 30, "delta {} bytes", d.len());
    assert_eq!(base.apply(&d).unwrap(), now);
    assert_eq!(
        base.apply(&Delta::from_bytes(d.as_bytes().to_vec()))
            .unwrap(),
        now
    );
    // Against the wrong base.
    assert!(matches!(now.apply(&d), Err(Error::DeltaBase { .. })));
    // Truncated or padded.
    let short = Delta::from_bytes(d.as_bytes()[..d.len() - 1].to_vec());
    assert!(base.apply(&short).is_err());
    let mut long = d.as_bytes().to_vec();
    long.push(0);
    assert!(base.apply(&Delta::from_bytes(long)).is_err());
    assert!(base.apply(&Delta::from_bytes(vec![])).is_err());
}

/// The bare fields (no header, no tag) embed in a caller's encoding: they
/// read back exactly, and leave what follows them alone.
#[test]
fn delta_fields_embed_without_a_tag() {
    let mut c = busy();
    let base = c.export_checkpoint().unwrap();
    let iss = c.iss();
    c.handle_segment(
        T0 + Duration::from_millis(20),
        &seg(IRS + 6, iss + 4001, TcpFlags::empty(), 8, b"more"),
    );
    c.release_to(c.rcv_nxt()).unwrap();
    let now = c.export_checkpoint().unwrap();
    let mut out = Vec::new();
    let mut w = relay_codec::Writer::new(&mut out);
    w.u8(0xaa);
    now.write_delta_fields(&base, &mut w);
    w.u8(0xbb);
    // The standalone delta is the same fields behind `RD`, version, tag.
    assert_eq!(
        &now.delta_from(&base).as_bytes()[7..],
        &out[1..out.len() - 1]
    );
    let mut r = relay_codec::Reader::new(&out);
    assert_eq!(r.u8("before"), Ok(0xaa));
    assert_eq!(base.apply_delta_fields(&mut r).unwrap(), now);
    assert_eq!(r.u8("after"), Ok(0xbb));
    r.finish().unwrap();
    // Cut short: a named field error, never a panic.
    for n in 1..out.len() - 1 {
        let mut r = relay_codec::Reader::new(&out[1..n]);
        assert!(base.apply_delta_fields(&mut r).is_err(), "{n} bytes");
    }
}

#[test]
fn handshake_is_not_checkpointable() {
    let tuple = FourTuple::new(LOCAL, REMOTE);
    let c = Connection::connect(cfg(), tuple, &crate::isn::IsnSecret::new([0; 16]), T0).unwrap();
    assert_eq!(
        c.export_checkpoint(),
        Err(Error::NotCheckpointable(State::SynSent))
    );
}

#[test]
fn unreleased_fin_is_left_out() {
    let mut c = busy();
    let iss = c.iss();
    c.handle_segment(T0, &seg(IRS + 6, iss + 2001, TcpFlags::FIN, 8, &[]));
    assert_eq!(c.state(), State::CloseWait);
    let ck = c.export_checkpoint().unwrap();
    assert_eq!(
        ck.state,
        State::Established,
        "the peer will send its FIN again"
    );
    c.release_to(c.rcv_nxt()).unwrap();
    assert_eq!(c.export_checkpoint().unwrap().state, State::CloseWait);
    c.close();
    let ck = c.export_checkpoint().unwrap();
    assert_eq!((ck.state, ck.snd_fin), (State::LastAck, Some(iss + 5001)));
    ck.validate().unwrap();
}

fn drain(
    c: &mut Connection,
    t: Instant,
) -> Vec<(
    SeqNumber,
    SeqNumber,
    usize,
    TcpFlags,
    u16,
    Option<TcpTimestamp>,
)> {
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    while let Some(r) = c.poll_transmit(t, &mut buf) {
        out.push((
            r.seq_number,
            r.ack_number,
            r.payload.len(),
            r.flags,
            r.window_len,
            r.options.timestamp,
        ));
    }
    out
}

#[test]
fn import_carries_on() {
    let old = busy();
    let ck = old.export_checkpoint().unwrap();
    let old_ts = old.ts_clock_now();
    let old_edge = old.rcv_adv();
    // Another machine, another clock.
    let t1 = Instant::from_secs(5);
    let mut c = Connection::import(cfg(), &ck, t1, Duration::from_millis(50)).unwrap();
    assert_eq!(c.state(), State::Established);
    assert_eq!(
        (c.snd_una(), c.snd_max(), c.release_point()),
        (ck.snd_una, ck.snd_max, ck.rcv_rel)
    );
    // First: a nudge ACK at the release point, window edge not moved back,
    // TSval above anything sent before.
    let out = drain(&mut c, t1);
    assert_eq!(out.len(), 1);
    let (seq, ack, len, flags, win, ts) = out[0];
    assert_eq!(
        (seq, ack, len, flags),
        (ck.snd_max, ck.rcv_rel, 0, TcpFlags::ACK)
    );
    assert!(ack + (usize::from(win) << ck.rcv_ws) >= old_edge);
    let tsval = ts.unwrap().tsval;
    assert!(tsval.wrapping_sub(old_ts) as i32 >= 50 + IMPORT_TS_SLACK_MS as i32);
    // The application hands back the unacknowledged bytes: resent from
    // snd_una, within the carried congestion window.
    assert_eq!(c.send_capacity(), cfg().send_buffer);
    assert_eq!(c.send(&[1; 3000]), 3000);
    let out = drain(&mut c, t1);
    let seqs: Vec<(SeqNumber, usize)> = out.iter().map(|o| (o.0, o.2)).collect();
    // 1000-byte MSS less 12 bytes of timestamp option.
    assert_eq!(
        seqs,
        [
            (ck.snd_una, 988),
            (ck.snd_una + 988, 988),
            (ck.snd_una + 1976, 988),
            (ck.snd_una + 2964, 36)
        ]
    );
    assert_eq!(c.stats().retransmits, 4);
    // The peer ACKs everything, including bytes the exporter sent after
    // its checkpoint (the application handed them back too).
    c.send(&[1; 500]);
    let _ = drain(&mut c, t1);
    c.handle_segment(
        t1,
        &seg(IRS + 4, ck.snd_max + 500, TcpFlags::empty(), 9, &[]),
    );
    assert_eq!(c.snd_una(), ck.snd_max + 500);
    assert_eq!(c.stats().acks_of_unsent, 0);
    // The receive side resumes at the release point: bytes after it come
    // again from the peer and are delivered.
    c.handle_segment(
        t1,
        &seg(IRS + 4, ck.snd_max + 500, TcpFlags::empty(), 9, b"lo!"),
    );
    let mut got = [0u8; 8];
    assert_eq!(c.recv(&mut got), 3);
    assert_eq!(&got[..3], b"lo!");
}

#[test]
fn import_with_fin_waits_for_the_bytes_before_it() {
    let mut old = busy();
    old.close();
    let ck = old.export_checkpoint().unwrap();
    assert_eq!(ck.state, State::FinWait1);
    let fin = ck.snd_fin.unwrap();
    let t1 = Instant::from_secs(5);
    let mut c = Connection::import(cfg(), &ck, t1, Duration::ZERO).unwrap();
    let _ = drain(&mut c, t1);
    // Only the bytes up to the FIN are taken.
    assert_eq!(c.send(&[1; 10_000]), 3000);
    let out = drain(&mut c, t1);
    let last = out.last().unwrap();
    assert!(last.3.contains(TcpFlags::FIN));
    assert_eq!(last.0 + last.2, fin);
    c.handle_segment(t1, &seg(IRS + 4, fin + 1, TcpFlags::empty(), 9, &[]));
    assert_eq!(c.state(), State::FinWait2);
}

#[test]
fn bad_import_is_refused() {
    let mut ck = busy().export_checkpoint().unwrap();
    ck.rcv_ws = 20;
    assert!(Connection::import(cfg(), &ck, T0, Duration::ZERO).is_err());
}
