//! Portable checkpoints of an established connection, and small deltas.
//!
//! See `CHECKPOINT.md` in the crate for the field list and the reasons.
//! The encoding is fixed-width big-endian behind a 4-byte magic and a
//! version byte; a delta lists the fields that changed against a base
//! checkpoint, each as a zigzag varint of the wrapping difference. A
//! standalone [`Delta`] names its base by a tag (a hash of its encoding);
//! the flow layer, which numbers its commits, names the base by commit
//! number and embeds only the fields (`write_delta_fields`). Both are written and read with `relay_codec`, so
//! a decoding error names the field.

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use relay_codec::{Reader, Writer};
use relay_wire::SeqNumber;

use crate::cc::CongestionAlgorithm;
use crate::config::Config;
use crate::conn::{Connection, Recovery, State};
use crate::error::Error;
use crate::isn::siphash24;
use crate::ring::Ring;
use crate::time::Instant;
use crate::tuple::FourTuple;

/// Version written by this build; `from_bytes` accepts only it.
pub const CHECKPOINT_VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"RTCK";
const DELTA_MAGIC: [u8; 2] = *b"RD";
/// Added to the timestamp clock on import, on top of the caller's
/// `elapsed`, so that TSval never goes back (RFC 7323 (5.4) PAWS on the
/// peer drops segments whose TSval went back).
pub const IMPORT_TS_SLACK_MS: u32 = 1000;

const FLAG_WS: u8 = 1;
const FLAG_SACK: u8 = 2;
const FLAG_TS: u8 = 4;
const FLAG_FIN: u8 = 8;

/// The state a peer needs to carry on a connection. Plain data: every
/// field is public, and the encoding is versioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The connection's 4-tuple, seen from the relay.
    pub tuple: FourTuple,
    /// State, as the importer must see it: a FIN received but not released
    /// is left out (the peer will send it again).
    pub state: State,
    /// Our initial sequence number.
    pub iss: SeqNumber,
    /// The peer's initial sequence number.
    pub irs: SeqNumber,
    /// Oldest unacknowledged sequence number: the importer's application
    /// re-supplies the send bytes from here.
    pub snd_una: SeqNumber,
    /// Highest sequence number sent: ACKs up to here are acceptable.
    pub snd_max: SeqNumber,
    /// Peer's window (scaled, bytes) as of `snd_wl2`.
    pub snd_wnd: u32,
    /// Sequence number of the segment that last updated the window.
    pub snd_wl1: SeqNumber,
    /// ACK number of the segment that last updated the window.
    pub snd_wl2: SeqNumber,
    /// Largest window the peer offered (RFC 5961 ACK check, SWS).
    pub max_snd_wnd: u32,
    /// Our FIN's sequence number if the application closed.
    pub snd_fin: Option<SeqNumber>,
    /// Release point: the cumulative ACK sent so far, and where reception
    /// resumes (bytes after it are not in the checkpoint).
    pub rcv_rel: SeqNumber,
    /// Right edge of the window advertised so far; never moves back.
    pub rcv_adv: SeqNumber,
    /// Our send MSS (the peer's MSS capped by ours).
    pub smss: u16,
    /// Window scaling was negotiated.
    pub ws_ok: bool,
    /// Shift applied to the peer's window.
    pub snd_ws: u8,
    /// Shift applied to our window.
    pub rcv_ws: u8,
    /// SACK was negotiated.
    pub sack_ok: bool,
    /// Timestamps were negotiated.
    pub ts_ok: bool,
    /// The peer's last TSval we echo (PAWS state).
    pub ts_recent: u32,
    /// Our timestamp clock at export (at the latest instant the exporter
    /// was handed; at least the last TSval sent): the importer continues
    /// above it.
    pub ts_clock: u32,
    /// Smoothed RTT in microseconds (0: none yet).
    pub srtt_us: u32,
    /// RTT variation in microseconds.
    pub rttvar_us: u32,
    /// Congestion controller.
    pub congestion: CongestionAlgorithm,
    /// Congestion window, bytes.
    pub cwnd: u32,
    /// Slow start threshold, bytes.
    pub ssthresh: u32,
    /// CUBIC W_max, bytes.
    pub w_max: u32,
}

/// Name and width in bytes of each field of the encoding, in order (see
/// `fields`). The names are what a decoding error reports.
const FIELDS: [(&str, usize); 28] = [
    ("state", 1),
    ("local address", 4),
    ("local port", 2),
    ("remote address", 4),
    ("remote port", 2),
    ("iss", 4),
    ("irs", 4),
    ("snd_una", 4),
    ("snd_max", 4),
    ("snd_wnd", 4),
    ("snd_wl1", 4),
    ("snd_wl2", 4),
    ("max_snd_wnd", 4),
    ("snd_fin", 4),
    ("rcv_rel", 4),
    ("rcv_adv", 4),
    ("smss", 2),
    ("snd_ws", 1),
    ("rcv_ws", 1),
    ("flags", 1),
    ("ts_recent", 4),
    ("ts_clock", 4),
    ("srtt", 4),
    ("rttvar", 4),
    ("congestion algorithm", 1),
    ("cwnd", 4),
    ("ssthresh", 4),
    ("w_max", 4),
];
const NFIELDS: usize = FIELDS.len();

/// Encoded size of a full checkpoint.
pub const CHECKPOINT_LEN: usize = 5 + {
    let mut n = 0;
    let mut i = 0;
    while i < NFIELDS {
        n += FIELDS[i].1;
        i += 1;
    }
    n
};

fn ip_u32(a: &SocketAddrV4) -> u64 {
    u64::from(u32::from(*a.ip()))
}

impl Checkpoint {
    fn fields(&self) -> [u64; NFIELDS] {
        let mut flags = 0u8;
        if self.ws_ok {
            flags |= FLAG_WS;
        }
        if self.sack_ok {
            flags |= FLAG_SACK;
        }
        if self.ts_ok {
            flags |= FLAG_TS;
        }
        if self.snd_fin.is_some() {
            flags |= FLAG_FIN;
        }
        [
            u64::from(self.state.to_u8()),
            ip_u32(&self.tuple.local),
            u64::from(self.tuple.local.port()),
            ip_u32(&self.tuple.remote),
            u64::from(self.tuple.remote.port()),
            u64::from(self.iss.0),
            u64::from(self.irs.0),
            u64::from(self.snd_una.0),
            u64::from(self.snd_max.0),
            u64::from(self.snd_wnd),
            u64::from(self.snd_wl1.0),
            u64::from(self.snd_wl2.0),
            u64::from(self.max_snd_wnd),
            u64::from(self.snd_fin.map_or(0, |s| s.0)),
            u64::from(self.rcv_rel.0),
            u64::from(self.rcv_adv.0),
            u64::from(self.smss),
            u64::from(self.snd_ws),
            u64::from(self.rcv_ws),
            u64::from(flags),
            u64::from(self.ts_recent),
            u64::from(self.ts_clock),
            u64::from(self.srtt_us),
            u64::from(self.rttvar_us),
            u64::from(self.congestion.to_u8()),
            u64::from(self.cwnd),
            u64::from(self.ssthresh),
            u64::from(self.w_max),
        ]
    }

    fn from_fields(f: &[u64; NFIELDS]) -> Result<Checkpoint, Error> {
        let u32_at = |i: usize| f[i] as u32;
        let seq = |i: usize| SeqNumber(f[i] as u32);
        let state = State::from_u8(f[0] as u8).ok_or(Error::CheckpointInvalid("unknown state"))?;
        let flags = f[19] as u8;
        if flags & !(FLAG_WS | FLAG_SACK | FLAG_TS | FLAG_FIN) != 0 {
            return Err(Error::CheckpointInvalid("unknown flag bits"));
        }
        let c = Checkpoint {
            state,
            tuple: FourTuple::new(
                SocketAddrV4::new(Ipv4Addr::from(u32_at(1)), f[2] as u16),
                SocketAddrV4::new(Ipv4Addr::from(u32_at(3)), f[4] as u16),
            ),
            iss: seq(5),
            irs: seq(6),
            snd_una: seq(7),
            snd_max: seq(8),
            snd_wnd: u32_at(9),
            snd_wl1: seq(10),
            snd_wl2: seq(11),
            max_snd_wnd: u32_at(12),
            snd_fin: (flags & FLAG_FIN != 0).then(|| seq(13)),
            rcv_rel: seq(14),
            rcv_adv: seq(15),
            smss: f[16] as u16,
            snd_ws: f[17] as u8,
            rcv_ws: f[18] as u8,
            ws_ok: flags & FLAG_WS != 0,
            sack_ok: flags & FLAG_SACK != 0,
            ts_ok: flags & FLAG_TS != 0,
            ts_recent: u32_at(20),
            ts_clock: u32_at(21),
            srtt_us: u32_at(22),
            rttvar_us: u32_at(23),
            congestion: CongestionAlgorithm::from_u8(f[24] as u8)
                .ok_or(Error::CheckpointInvalid("unknown congestion algorithm"))?,
            cwnd: u32_at(25),
            ssthresh: u32_at(26),
            w_max: u32_at(27),
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks the invariants an importer relies on, naming the first broken.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s| Err(Error::CheckpointInvalid(s));
        if !self.state.is_synchronized() {
            return bad("state is not synchronized");
        }
        if self.tuple.local.port() == 0 || self.tuple.remote.port() == 0 {
            return bad("port 0");
        }
        if self.snd_ws > 14 || self.rcv_ws > 14 {
            return bad("window shift above 14");
        }
        if !self.ws_ok && (self.snd_ws != 0 || self.rcv_ws != 0) {
            return bad("window shift without window scaling");
        }
        if self.smss < 64 {
            return bad("smss below 64");
        }
        let limit: i32 = 1 << 30;
        let d = self.snd_max - self.snd_una;
        if !(0..=limit).contains(&d) {
            return bad("snd_una after snd_max or too far behind");
        }
        let d = self.rcv_adv - self.rcv_rel;
        if !(0..=limit).contains(&d) {
            return bad("rcv_adv before rcv_rel or too far ahead");
        }
        let closed_send = matches!(
            self.state,
            State::FinWait1 | State::FinWait2 | State::Closing | State::LastAck | State::TimeWait
        );
        match self.snd_fin {
            None if closed_send => return bad("state needs snd_fin"),
            Some(_) if !closed_send => return bad("snd_fin in a state that did not close"),
            Some(fin) if self.snd_una > fin + 1 || fin + 1 < self.snd_max => {
                return bad("snd_fin outside [snd_una - 1, snd_max - 1]");
            }
            _ => {}
        }
        let fin_acked = self.snd_fin.is_some_and(|f| self.snd_una > f);
        if matches!(self.state, State::FinWait2 | State::TimeWait) != fin_acked && closed_send {
            return bad("FIN acknowledgement does not match the state");
        }
        if self.cwnd == 0 {
            return bad("zero cwnd");
        }
        Ok(())
    }

    /// The encoding: `RTCK`, version, then the fields big-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_LEN);
        let mut w = Writer::new(&mut out);
        w.bytes(&MAGIC);
        w.u8(CHECKPOINT_VERSION);
        for (v, (_, width)) in self.fields().into_iter().zip(FIELDS) {
            // Each value fits its width: `fields` widens narrower integers.
            match width {
                1 => w.u8(v as u8),
                2 => w.u16(v as u16),
                4 => w.u32(v as u32),
                _ => w.u64(v),
            }
        }
        out
    }

    /// Decodes and validates a checkpoint.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, Error> {
        if bytes.len() < 5 {
            return Err(Error::CheckpointTruncated {
                needed: CHECKPOINT_LEN,
                got: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        if r.take(4, "magic")? != MAGIC {
            return Err(Error::CheckpointMagic);
        }
        let version = r.u8("version")?;
        if version != CHECKPOINT_VERSION {
            return Err(Error::CheckpointVersion(version));
        }
        if bytes.len() < CHECKPOINT_LEN {
            return Err(Error::CheckpointTruncated {
                needed: CHECKPOINT_LEN,
                got: bytes.len(),
            });
        }
        if bytes.len() > CHECKPOINT_LEN {
            return Err(Error::CheckpointInvalid("trailing bytes"));
        }
        let mut fields = [0u64; NFIELDS];
        for (slot, (what, width)) in fields.iter_mut().zip(FIELDS) {
            *slot = match width {
                1 => u64::from(r.u8(what)?),
                2 => u64::from(r.u16(what)?),
                4 => u64::from(r.u32(what)?),
                _ => r.u64(what)?,
            };
        }
        r.finish()?;
        Checkpoint::from_fields(&fields)
    }

    /// A tag naming this checkpoint's exact contents, which a standalone
    /// [`Delta`] names its base by. (A caller that numbers its
    /// checkpoints, such as the flow layer with its commit numbers, names
    /// the base itself and uses [`Self::write_delta_fields`] /
    /// [`Self::apply_delta_fields`], which carry no tag.)
    pub fn tag(&self) -> u32 {
        siphash24(&[0; 16], &self.to_bytes()) as u32
    }

    /// The delta that turns `base` into `self`, standalone: `RD`, the
    /// version, the base's [`tag`](Self::tag), then the fields.
    pub fn delta_from(&self, base: &Checkpoint) -> Delta {
        let mut bytes = Vec::with_capacity(32);
        let mut w = Writer::new(&mut bytes);
        w.bytes(&DELTA_MAGIC);
        w.u8(CHECKPOINT_VERSION);
        w.u32(base.tag());
        self.write_delta_fields(base, &mut w);
        Delta { bytes }
    }

    /// Applies a standalone delta made against `self`, giving the newer
    /// checkpoint. A delta made from another base is
    /// [`Error::DeltaBase`].
    pub fn apply(&self, delta: &Delta) -> Result<Checkpoint, Error> {
        let mut r = Reader::new(&delta.bytes);
        if r.take(2, "delta magic")? != DELTA_MAGIC {
            return Err(Error::CheckpointMagic);
        }
        let version = r.u8("delta version")?;
        if version != CHECKPOINT_VERSION {
            return Err(Error::CheckpointVersion(version));
        }
        let got = r.u32("delta base tag")?;
        let expected = self.tag();
        if got != expected {
            return Err(Error::DeltaBase { expected, got });
        }
        let ck = self.apply_delta_fields(&mut r)?;
        r.finish()?;
        Ok(ck)
    }

    /// The changed fields from `base` to `self`, without a header or a
    /// name for the base: a varint bit mask of the changed fields, then
    /// each changed field as the zigzag varint of its wrapping difference.
    /// For a caller whose own encoding names the base (the flow layer's
    /// delta names it by commit number); read back with
    /// [`Self::apply_delta_fields`] on the same base.
    pub fn write_delta_fields(&self, base: &Checkpoint, w: &mut Writer<'_>) {
        let new = self.fields();
        let old = base.fields();
        let mut mask = 0u32;
        for i in 0..NFIELDS {
            if new[i] != old[i] {
                mask |= 1 << i;
            }
        }
        w.varint(u64::from(mask));
        for (i, (_, width)) in FIELDS.iter().enumerate() {
            if mask & (1 << i) != 0 {
                w.zigzag(wrapping_diff(new[i], old[i], *width));
            }
        }
    }

    /// Reads what [`Self::write_delta_fields`] wrote against `self` (the
    /// caller has checked that `self` is the base it names) and returns the
    /// newer checkpoint, validated. Reads exactly the fields, no further.
    pub fn apply_delta_fields(&self, r: &mut Reader<'_>) -> Result<Checkpoint, Error> {
        let mask = r.varint("delta field mask")?;
        if mask >> NFIELDS != 0 {
            return Err(Error::CheckpointInvalid("delta names unknown fields"));
        }
        let mut fields = self.fields();
        for (i, (field, (what, width))) in fields.iter_mut().zip(FIELDS).enumerate() {
            if mask & (1 << i) != 0 {
                *field = wrapping_add(*field, r.zigzag(what)?, width);
            }
        }
        Checkpoint::from_fields(&fields)
    }
}

/// A delta between two checkpoints of one connection: the encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    bytes: Vec<u8>,
}

impl Delta {
    /// The encoding (what goes on the backplane).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Wraps received bytes; they are checked by [`Checkpoint::apply`].
    pub fn from_bytes(bytes: Vec<u8>) -> Delta {
        Delta { bytes }
    }

    /// Encoded size.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true for a delta made by [`Checkpoint::delta_from`].
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn mask_of(width: usize) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    }
}

fn wrapping_diff(new: u64, old: u64, width: usize) -> i64 {
    let m = mask_of(width);
    let d = new.wrapping_sub(old) & m;
    let bits = 8 * width as u32;
    if bits == 0 || bits >= 64 {
        return d as i64;
    }
    // Sign-extend from the field width.
    let shift = 64 - bits;
    ((d << shift) as i64) >> shift
}

fn wrapping_add(v: u64, d: i64, width: usize) -> u64 {
    v.wrapping_add(d as u64) & mask_of(width)
}

impl Connection {
    /// Exports the connection's state. Only synchronized connections can be
    /// exported. Received bytes past the release point, and a FIN not yet
    /// released, are left out: the peer still holds them and sends them
    /// again to the importer.
    pub fn export_checkpoint(&self) -> Result<Checkpoint, Error> {
        if !self.state.is_synchronized() {
            return Err(Error::NotCheckpointable(self.state));
        }
        let fin_released = self.rcv_fin.is_some_and(|f| self.rcv_rel > f);
        let state = if fin_released {
            self.state
        } else {
            match self.state {
                State::CloseWait => State::Established,
                State::Closing | State::LastAck => State::FinWait1,
                State::TimeWait => State::FinWait2,
                s => s,
            }
        };
        Ok(Checkpoint {
            tuple: self.tuple,
            state,
            iss: self.iss,
            irs: self.irs,
            snd_una: self.snd_una,
            snd_max: self.snd_max,
            snd_wnd: self.snd_wnd,
            snd_wl1: self.snd_wl1,
            snd_wl2: self.snd_wl2,
            max_snd_wnd: self.max_snd_wnd,
            snd_fin: self.snd_fin,
            rcv_rel: self.rcv_rel,
            rcv_adv: self.rcv_adv,
            smss: self.smss,
            ws_ok: self.ws_ok,
            snd_ws: self.snd_ws,
            rcv_ws: self.rcv_ws,
            sack_ok: self.sack_ok,
            ts_ok: self.ts_ok,
            ts_recent: self.ts_recent,
            ts_clock: self.ts_clock_now(),
            srtt_us: self
                .rtt
                .srtt_us
                .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)),
            rttvar_us: u32::try_from(self.rtt.rttvar_us).unwrap_or(u32::MAX),
            congestion: self.cc.algorithm,
            cwnd: self.cc.cwnd,
            ssthresh: self.cc.ssthresh,
            w_max: self.cc.w_max,
        })
    }

    /// The delta from `since` (an earlier export of this connection) to now.
    pub fn export_delta(&self, since: &Checkpoint) -> Result<Delta, Error> {
        Ok(self.export_checkpoint()?.delta_from(since))
    }

    /// Carries on a connection from a checkpoint, on another engine
    /// instance (another machine, another clock).
    ///
    /// `elapsed` bounds how long the exporter may have kept running after
    /// the checkpoint was taken (e.g. the time since the replica received
    /// it): the timestamp clock resumes that far, plus
    /// [`IMPORT_TS_SLACK_MS`], above the last TSval in the checkpoint.
    ///
    /// The send buffer starts empty at `snd_una`: the application must hand
    /// back, with [`send`](Connection::send), the bytes from
    /// `checkpoint.snd_una` on (at least up to `snd_max`, and up to
    /// `snd_fin` if set), identical to those sent before. They are
    /// retransmitted as they arrive. Reception resumes at the release point;
    /// the first `poll_transmit` is an ACK that nudges the peer.
    pub fn import(
        cfg: Config,
        ckpt: &Checkpoint,
        now: Instant,
        elapsed: Duration,
    ) -> Result<Connection, Error> {
        cfg.validate()?;
        ckpt.validate()?;
        let elapsed_ms = u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX / 4);
        let ts_next = ckpt
            .ts_clock
            .wrapping_add(elapsed_ms)
            .wrapping_add(IMPORT_TS_SLACK_MS);
        let ts_offset = ts_next.wrapping_sub(now.millis() as u32);
        let mut c = Connection::blank(cfg, ckpt.tuple, ckpt.iss, ts_offset, now);
        c.state = ckpt.state;
        c.snd_una = ckpt.snd_una;
        c.snd_nxt = ckpt.snd_una;
        c.snd_max = ckpt.snd_max;
        c.snd_wnd = ckpt.snd_wnd;
        c.snd_wl1 = ckpt.snd_wl1;
        c.snd_wl2 = ckpt.snd_wl2;
        c.max_snd_wnd = ckpt.max_snd_wnd;
        c.snd_fin = ckpt.snd_fin;
        c.mark_syn_acked();
        c.imported = true;
        c.irs = ckpt.irs;
        c.rcv_nxt = ckpt.rcv_rel;
        c.rcv_rel = ckpt.rcv_rel;
        c.rx_read = ckpt.rcv_rel;
        c.rcv_adv = ckpt.rcv_adv;
        if matches!(
            ckpt.state,
            State::CloseWait | State::Closing | State::LastAck | State::TimeWait
        ) {
            c.rcv_fin = Some(ckpt.rcv_rel - 1);
        }
        c.smss = ckpt.smss.min(c.cfg.mss);
        c.ws_ok = ckpt.ws_ok;
        c.snd_ws = ckpt.snd_ws;
        c.rcv_ws = ckpt.rcv_ws;
        c.sack_ok = ckpt.sack_ok;
        c.ts_ok = ckpt.ts_ok;
        c.ts_recent = ckpt.ts_recent;
        c.ts_last = ts_next;
        c.set_last_ack_sent(ckpt.rcv_rel);
        // Room for everything already advertised, whatever our buffer size.
        let advertised = usize::try_from((ckpt.rcv_adv - ckpt.rcv_rel).max(0)).unwrap_or(0);
        c.rx = Ring::new(c.cfg.recv_buffer.max(advertised) + (1usize << c.rcv_ws));
        c.rtt
            .restore(u64::from(ckpt.srtt_us), u64::from(ckpt.rttvar_us));
        c.cc.restore(ckpt.cwnd, ckpt.ssthresh, ckpt.w_max);
        c.recovery_point = ckpt.snd_una;
        c.high_rxt = ckpt.snd_una;
        if ckpt.snd_una != ckpt.snd_max {
            // Everything outstanding is resent from snd_una as the
            // application hands the bytes back.
            c.recovery = Recovery::Loss;
            c.recovery_point = ckpt.snd_max;
            c.arm_rto(now);
        }
        if ckpt.state == State::TimeWait {
            // Nothing to nudge: the peer may have closed already and would
            // answer with a RST.
            c.arm_time_wait(now);
        } else {
            c.nudge();
        }
        tracing::debug!(tuple = ?ckpt.tuple, state = %ckpt.state, "imported");
        Ok(c)
    }
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
