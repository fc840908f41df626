//! Commit deltas: a flow's full checkpoint travels once (when the flow is
//! replicated), then each commit travels as the difference from the last
//! one the peer acknowledged.
//!
//! Encoding: `RFLD`, a version byte, the 32-bit tag of the base checkpoint
//! (FNV-1a of its encoding, so a delta never applies to the wrong base),
//! then the front and back TCP deltas (`relay_tcp::Delta`), the traffic
//! state, the partial record (unchanged, grown by a suffix, or whole), the
//! four stream offsets as zigzag varints of
//! their change, and the batches as "dropped from the front, appended at
//! the back". Traffic states are coded as unchanged, as new sequence
//! numbers only, or whole. Written and read with `relay_codec`; decoding
//! never panics: a lying peer gets a [`FlowError::Checkpoint`] naming the
//! part.

use relay_codec::{Reader, Writer};
use relay_tcp::{Checkpoint, Delta};
use relay_tls::TrafficState;

use crate::checkpoint::{FlowCheckpoint, MAX_BATCHES, MAX_PARTIAL, PlannedBatch};
use crate::error::FlowError;

const MAGIC: &[u8; 4] = b"RFLD";
/// Encoding version of deltas.
pub const FLOW_DELTA_VERSION: u8 = 1;

/// The tag a delta names its base by.
pub fn checkpoint_tag(ck: &FlowCheckpoint) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in ck.to_bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The delta from `base` to `new`, or `None` when only a full checkpoint
/// can say it (another flow, new metadata, batches that do not continue
/// the base's).
pub fn encode_delta(new: &FlowCheckpoint, base: &FlowCheckpoint) -> Option<Vec<u8>> {
    if new.id != base.id || new.meta != base.meta {
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
    // The base is named by a hash of its encoding (see `checkpoint_tag`).
    w.u32(checkpoint_tag(base));
    for (n, b) in [(&new.front, &base.front), (&new.back, &base.back)] {
        w.varint_block(n.delta_from(b).as_bytes());
    }
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

/// Applies a delta made by [`encode_delta`] to `base`.
pub fn apply_delta(base: &FlowCheckpoint, bytes: &[u8]) -> Result<FlowCheckpoint, FlowError> {
    let mut r = Reader::new(bytes);
    if r.take(4, "delta magic")? != MAGIC {
        return Err(FlowError::Checkpoint("delta magic"));
    }
    if r.u8("delta version")? != FLOW_DELTA_VERSION {
        return Err(FlowError::Checkpoint("delta version"));
    }
    if r.u32("delta base")? != checkpoint_tag(base) {
        return Err(FlowError::Checkpoint("delta base"));
    }
    let front = tcp_apply(&base.front, &mut r, "front delta")?;
    let back = tcp_apply(&base.back, &mut r, "back delta")?;
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
        front,
        back,
        traffic,
        partial,
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

/// A TCP delta (`relay_tcp::Delta`) travels as a varint length and its bytes.
fn tcp_apply(
    base: &Checkpoint,
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<Checkpoint, FlowError> {
    let d = Delta::from_bytes(r.varint_block(what, 512)?.to_vec());
    base.apply(&d).map_err(|_| FlowError::Checkpoint(what))
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
    fn an_endless_varint_is_a_named_error() {
        // The varints and zigzag themselves are tested in relay-codec; here:
        // a delta whose front length never ends is an error naming the part.
        let mut bytes = MAGIC.to_vec();
        bytes.push(FLOW_DELTA_VERSION);
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&[0xff; 11]);
        let mut r = Reader::new(&bytes[9..]);
        assert_eq!(
            r.varint_block("front delta", 512)
                .map_err(FlowError::from)
                .err()
                .map(|e| e.to_string()),
            Some(FlowError::Checkpoint("front delta").to_string())
        );
    }
}
