//! Commit deltas: a flow's full checkpoint travels once (when the flow is
//! replicated), then each commit travels as the difference from the
//! flow's previous commit on the same connection (the standby applies a
//! stream in order, so it holds that base when the delta arrives).
//!
//! Encoding: `RFLD`, a version byte, the commit number of the base
//! checkpoint and the delta's own (each a varint epoch and a varint `n`:
//! a delta applies only to the checkpoint of its base commit, and gives
//! the checkpoint of its own), then the front and back TCP deltas (the
//! changed fields, `relay_tcp::Checkpoint::write_delta_fields`), the
//! traffic state, the partial record (unchanged, grown by a suffix, or
//! whole), the handshake tail (unchanged or whole), the four stream offsets as zigzag varints of their change, and
//! the batches as "dropped from the front, appended at the back". Traffic
//! states are coded as unchanged, as new sequence numbers only, or whole.
//! Written and read with `relay_codec`; decoding never panics: a lying
//! peer gets a [`FlowError::Checkpoint`] naming the part, a delta for
//! another base [`FlowError::DeltaBase`] naming both commits.

use relay_codec::{Reader, Writer};
use relay_tls::TrafficState;

use crate::checkpoint::{
    FlowCheckpoint, MAX_BATCHES, MAX_DOWN_PARTIAL, MAX_HS_TAIL, MAX_PARTIAL, PlannedBatch,
};
use crate::error::FlowError;
use crate::outbox::CommitNo;

const MAGIC: &[u8; 4] = b"RFLD";
/// Encoding version of deltas.
pub const FLOW_DELTA_VERSION: u8 = 4;

/// The delta from `base` to `new`, named by their commit numbers, or
/// `None` when only a full checkpoint can say it (another flow, a commit
/// that does not follow the base's, new metadata, batches that do not
/// continue the base's).
pub fn encode_delta(new: &FlowCheckpoint, base: &FlowCheckpoint) -> Option<Vec<u8>> {
    if new.id != base.id || new.commit <= base.commit || new.meta != base.meta {
        return None;
    }
    // Always found: every list starts with the empty tail.
    let dropped =
        (0..=base.batches.len()).find(|&d| new.batches.starts_with(&base.batches[d..]))?;
    let added = &new.batches[base.batches.len() - dropped..];
    let mut out = Vec::with_capacity(64);
    let mut w = Writer::new(&mut out);
    w.bytes(MAGIC);
    w.u8(FLOW_DELTA_VERSION);
    put_commit(&mut w, base.commit);
    put_commit(&mut w, new.commit);
    new.front.write_delta_fields(&base.front, &mut w);
    new.back.write_delta_fields(&base.back, &mut w);
    put_traffic(&mut w, &new.traffic, &base.traffic);
    // A record still arriving grows: only its new bytes travel.
    if new.partial == base.partial {
        w.u8(0);
    } else if new.partial.starts_with(&base.partial) && !base.partial.is_empty() {
        w.u8(1);
        w.varint_block(&new.partial[base.partial.len()..]);
    } else {
        w.u8(2);
        w.varint_block(&new.partial);
    }
    // The handshake tail only shrinks, and only right after the handshake.
    if new.hs_tail == base.hs_tail {
        w.u8(0);
    } else {
        w.u8(2);
        w.varint_block(&new.hs_tail);
    }
    // Backend plaintext held past the down point grows a segment at a time
    // while the down point stays.
    if new.down_partial == base.down_partial {
        w.u8(0);
    } else if new.down_plain_off == base.down_plain_off
        && new.down_partial.starts_with(&base.down_partial)
        && !base.down_partial.is_empty()
    {
        w.u8(1);
        w.varint_block(&new.down_partial[base.down_partial.len()..]);
    } else {
        w.u8(2);
        w.varint_block(&new.down_partial);
    }
    for (n, b) in [
        (new.up_client_off, base.up_client_off),
        (new.up_plain_off, base.up_plain_off),
        (new.down_client_off, base.down_client_off),
        (new.down_plain_off, base.down_plain_off),
    ] {
        w.zigzag(n.wrapping_sub(b) as i64);
    }
    w.varint(dropped as u64);
    w.varint(added.len() as u64);
    let mut prev = new
        .batches
        .len()
        .checked_sub(added.len() + 1)
        .map_or(&base.traffic, |i| &new.batches[i].state_before);
    for b in added {
        put_traffic(&mut w, &b.state_before, prev);
        w.varint(b.client_off);
        w.varint(b.plain_off);
        w.bool(b.close);
        w.varint(b.sizes.len() as u64);
        for &s in &b.sizes {
            w.varint(u64::from(s));
        }
        prev = &b.state_before;
    }
    Some(out)
}

/// Applies a delta made by [`encode_delta`] to `base`, the checkpoint of
/// the delta's base commit; anything else is [`FlowError::DeltaBase`],
/// naming both commits.
pub fn apply_delta(base: &FlowCheckpoint, bytes: &[u8]) -> Result<FlowCheckpoint, FlowError> {
    let mut r = Reader::new(bytes);
    if r.take(4, "delta magic")? != MAGIC {
        return Err(FlowError::Checkpoint("delta magic"));
    }
    if r.u8("delta version")? != FLOW_DELTA_VERSION {
        return Err(FlowError::Checkpoint("delta version"));
    }
    let delta_base = get_commit(&mut r, "delta base")?;
    if delta_base != base.commit {
        return Err(FlowError::DeltaBase {
            base: delta_base,
            held: base.commit,
        });
    }
    let commit = get_commit(&mut r, "delta commit")?;
    if commit <= base.commit {
        return Err(FlowError::Checkpoint("delta commit (not after its base)"));
    }
    let front = base
        .front
        .apply_delta_fields(&mut r)
        .map_err(|_| FlowError::Checkpoint("front delta"))?;
    let back = base
        .back
        .apply_delta_fields(&mut r)
        .map_err(|_| FlowError::Checkpoint("back delta"))?;
    let traffic = get_traffic(&mut r, &base.traffic, "traffic delta")?;
    let partial = match r.u8("partial")? {
        0 => base.partial.clone(),
        kind @ (1 | 2) => {
            let bytes = r.varint_block("partial", MAX_PARTIAL)?;
            let mut p = if kind == 1 {
                base.partial.clone()
            } else {
                Vec::new()
            };
            p.extend_from_slice(bytes);
            if p.len() > MAX_PARTIAL {
                return Err(FlowError::Checkpoint("partial"));
            }
            p
        }
        _ => return Err(FlowError::Checkpoint("partial")),
    };
    let hs_tail = match r.u8("hs_tail")? {
        0 => base.hs_tail.clone(),
        2 => r.varint_block("hs_tail", MAX_HS_TAIL)?.to_vec(),
        _ => return Err(FlowError::Checkpoint("hs_tail")),
    };
    let down_partial = match r.u8("down_partial")? {
        0 => base.down_partial.clone(),
        1 => {
            let bytes = r.varint_block("down_partial", MAX_DOWN_PARTIAL)?;
            if base.down_partial.len() + bytes.len() > MAX_DOWN_PARTIAL {
                return Err(FlowError::Checkpoint("down_partial"));
            }
            let mut grown = base.down_partial.clone();
            grown.extend_from_slice(bytes);
            grown
        }
        2 => r.varint_block("down_partial", MAX_DOWN_PARTIAL)?.to_vec(),
        _ => return Err(FlowError::Checkpoint("down_partial")),
    };
    let mut offs = [0u64; 4];
    for (o, b) in offs.iter_mut().zip([
        base.up_client_off,
        base.up_plain_off,
        base.down_client_off,
        base.down_plain_off,
    ]) {
        *o = b.wrapping_add(r.zigzag("offsets")? as u64);
    }
    let dropped = r.varint_max("batches dropped", base.batches.len() as u64)? as usize;
    let added = r.varint_max("batches added", MAX_BATCHES as u64)? as usize;
    let mut batches: Vec<PlannedBatch> = base.batches[dropped..].to_vec();
    if batches.len() + added > MAX_BATCHES {
        return Err(FlowError::Checkpoint("batches"));
    }
    for _ in 0..added {
        let prev = batches
            .last()
            .map_or(&base.traffic, |b| &b.state_before)
            .clone();
        let state_before = get_traffic(&mut r, &prev, "batch state")?;
        let client_off = r.varint("batch client_off")?;
        let plain_off = r.varint("batch plain_off")?;
        let close = r.bool("batch close")?;
        let count = r.varint_max("batch sizes", 64)? as usize;
        let mut sizes = Vec::with_capacity(count);
        for _ in 0..count {
            let s = r.varint("batch size")?;
            if s == 0 || s > 1 << 14 {
                return Err(FlowError::Checkpoint("batch size"));
            }
            sizes.push(s as u16);
        }
        batches.push(PlannedBatch {
            state_before,
            client_off,
            plain_off,
            sizes,
            close,
        });
    }
    if !r.is_empty() {
        return Err(FlowError::Checkpoint("delta trailing bytes"));
    }
    let ck = FlowCheckpoint {
        id: base.id,
        commit,
        front,
        back,
        traffic,
        partial,
        hs_tail,
        down_partial,
        up_client_off: offs[0],
        up_plain_off: offs[1],
        down_client_off: offs[2],
        down_plain_off: offs[3],
        batches,
        meta: base.meta.clone(),
    };
    ck.validate()?;
    ck.front
        .validate()
        .map_err(|_| FlowError::Checkpoint("front"))?;
    ck.back
        .validate()
        .map_err(|_| FlowError::Checkpoint("back"))?;
    Ok(ck)
}

/// A commit number in a delta: varint epoch, varint `n`.
fn put_commit(w: &mut Writer<'_>, no: CommitNo) {
    w.varint(u64::from(no.epoch));
    w.varint(no.n);
}

fn get_commit(r: &mut Reader<'_>, what: &'static str) -> Result<CommitNo, FlowError> {
    let epoch = r.varint_max(what, u64::from(u32::MAX))? as u32;
    Ok(CommitNo::new(epoch, r.varint(what)?))
}

/// 0: unchanged; 1: read and write sequence numbers changed; 2: whole.
fn put_traffic(w: &mut Writer<'_>, new: &TrafficState, base: &TrafficState) {
    if new == base {
        w.u8(0);
        return;
    }
    let mut same_but_seq = base.clone();
    same_but_seq.read.seq = new.read.seq;
    same_but_seq.write.seq = new.write.seq;
    if &same_but_seq == new {
        w.u8(1);
        w.varint(new.read.seq);
        w.varint(new.write.seq);
        return;
    }
    w.u8(2);
    w.varint_block(&new.export());
}

fn get_traffic(
    r: &mut Reader<'_>,
    base: &TrafficState,
    what: &'static str,
) -> Result<TrafficState, FlowError> {
    match r.u8(what)? {
        0 => Ok(base.clone()),
        1 => {
            let mut t = base.clone();
            t.read.seq = r.varint(what)?;
            t.write.seq = r.varint(what)?;
            Ok(t)
        }
        2 => {
            let t = TrafficState::import(r.varint_block(what, 4096)?)
                .map_err(|_| FlowError::Checkpoint(what))?;
            if t.suite != base.suite {
                return Err(FlowError::Checkpoint(what));
            }
            Ok(t)
        }
        _ => Err(FlowError::Checkpoint(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_numbers_round_trip_and_bad_ones_are_named() {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        put_commit(&mut w, CommitNo::new(3, 1 << 40));
        put_commit(&mut w, CommitNo::new(u32::MAX, 0));
        let mut r = Reader::new(&out);
        assert_eq!(
            get_commit(&mut r, "delta base").ok(),
            Some(CommitNo::new(3, 1 << 40))
        );
        assert_eq!(
            get_commit(&mut r, "delta commit").ok(),
            Some(CommitNo::new(u32::MAX, 0))
        );
        assert!(r.is_empty());
        // An epoch past u32, and a varint that never ends: named errors.
        let mut out = Vec::new();
        Writer::new(&mut out).varint(u64::from(u32::MAX) + 1);
        out.push(0);
        let e = get_commit(&mut Reader::new(&out), "delta base").err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some(FlowError::Checkpoint("delta base").to_string())
        );
        let e = get_commit(&mut Reader::new(&[0xff; 11]), "delta commit").err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some(FlowError::Checkpoint("delta commit").to_string())
        );
    }
}
