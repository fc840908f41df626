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
//! numbers only, or whole. Decoding never panics: a lying peer gets a
//! [`FlowError::Checkpoint`] naming the part.

use relay_tcp::{Checkpoint, Delta};
use relay_tls::TrafficState;

use crate::checkpoint::{FlowCheckpoint, MAX_BATCHES, MAX_PARTIAL, PlannedBatch};
use crate::codec::{Reader, put_varint};
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
    out.extend_from_slice(MAGIC);
    out.push(FLOW_DELTA_VERSION);
    out.extend_from_slice(&checkpoint_tag(base).to_be_bytes());
    for (n, b) in [(&new.front, &base.front), (&new.back, &base.back)] {
        let d = n.delta_from(b);
        put_varint(&mut out, d.len() as u64);
        out.extend_from_slice(d.as_bytes());
    }
    put_traffic(&mut out, &new.traffic, &base.traffic);
    // A record still arriving grows: only its new bytes travel.
    if new.partial == base.partial {
        out.push(0);
    } else if new.partial.starts_with(&base.partial) && !base.partial.is_empty() {
        out.push(1);
        let added = &new.partial[base.partial.len()..];
        put_varint(&mut out, added.len() as u64);
        out.extend_from_slice(added);
    } else {
        out.push(2);
        put_varint(&mut out, new.partial.len() as u64);
        out.extend_from_slice(&new.partial);
    }
    for (n, b) in [
        (new.up_client_off, base.up_client_off),
        (new.up_plain_off, base.up_plain_off),
        (new.down_client_off, base.down_client_off),
        (new.down_plain_off, base.down_plain_off),
    ] {
        put_varint(&mut out, zigzag(n.wrapping_sub(b) as i64));
    }
    put_varint(&mut out, dropped as u64);
    put_varint(&mut out, added.len() as u64);
    let mut prev = new
        .batches
        .len()
        .checked_sub(added.len() + 1)
        .map_or(&base.traffic, |i| &new.batches[i].state_before);
    for b in added {
        put_traffic(&mut out, &b.state_before, prev);
        put_varint(&mut out, b.client_off);
        put_varint(&mut out, b.plain_off);
        out.push(u8::from(b.close));
        put_varint(&mut out, b.sizes.len() as u64);
        for &s in &b.sizes {
            put_varint(&mut out, u64::from(s));
        }
        prev = &b.state_before;
    }
    Some(out)
}

/// Applies a delta made by [`encode_delta`] to `base`.
pub fn apply_delta(base: &FlowCheckpoint, bytes: &[u8]) -> Result<FlowCheckpoint, FlowError> {
    let mut r = Reader(bytes);
    if r.take(4, "delta magic")? != MAGIC {
        return Err(FlowError::Checkpoint("delta magic"));
    }
    if r.u8("delta version")? != FLOW_DELTA_VERSION {
        return Err(FlowError::Checkpoint("delta version"));
    }
    let tag = r.take(4, "delta base")?;
    if u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]]) != checkpoint_tag(base) {
        return Err(FlowError::Checkpoint("delta base"));
    }
    let front = tcp_apply(&base.front, &mut r, "front delta")?;
    let back = tcp_apply(&base.back, &mut r, "back delta")?;
    let traffic = get_traffic(&mut r, &base.traffic, "traffic delta")?;
    let partial = match r.u8("partial")? {
        0 => base.partial.clone(),
        kind @ (1 | 2) => {
            let n = r.varint("partial")? as usize;
            if n > MAX_PARTIAL {
                return Err(FlowError::Checkpoint("partial"));
            }
            let bytes = r.take(n, "partial")?;
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
        *o = b.wrapping_add(unzigzag(r.varint("offsets")?) as u64);
    }
    let dropped = r.varint("batches dropped")? as usize;
    let added = r.varint("batches added")? as usize;
    if dropped > base.batches.len() || added > MAX_BATCHES {
        return Err(FlowError::Checkpoint("batches"));
    }
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
        let close = match r.u8("batch close")? {
            0 => false,
            1 => true,
            _ => return Err(FlowError::Checkpoint("batch close")),
        };
        let count = r.varint("batch sizes")? as usize;
        if count > 64 {
            return Err(FlowError::Checkpoint("batch sizes"));
        }
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
    if !r.0.is_empty() {
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

fn tcp_apply(
    base: &Checkpoint,
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<Checkpoint, FlowError> {
    let n = r.varint(what)? as usize;
    if n > 512 {
        return Err(FlowError::Checkpoint(what));
    }
    let d = Delta::from_bytes(r.take(n, what)?.to_vec());
    base.apply(&d).map_err(|_| FlowError::Checkpoint(what))
}

/// 0: unchanged; 1: read and write sequence numbers changed; 2: whole.
fn put_traffic(out: &mut Vec<u8>, new: &TrafficState, base: &TrafficState) {
    if new == base {
        out.push(0);
        return;
    }
    let mut same_but_seq = base.clone();
    same_but_seq.read.seq = new.read.seq;
    same_but_seq.write.seq = new.write.seq;
    if &same_but_seq == new {
        out.push(1);
        put_varint(out, new.read.seq);
        put_varint(out, new.write.seq);
        return;
    }
    out.push(2);
    let bytes = new.export();
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(&bytes);
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
            let n = r.varint(what)? as usize;
            if n > 4096 {
                return Err(FlowError::Checkpoint(what));
            }
            let t =
                TrafficState::import(r.take(n, what)?).map_err(|_| FlowError::Checkpoint(what))?;
            if t.suite != base.suite {
                return Err(FlowError::Checkpoint(what));
            }
            Ok(t)
        }
        _ => Err(FlowError::Checkpoint(what)),
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Reader(&out).varint("v").unwrap(), v);
        }
        for v in [0i64, 1, -1, 1 << 40, -(1 << 40), i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        // An endless varint is an error, not a loop.
        assert!(Reader(&[0xff; 11]).varint("v").is_err());
    }
}
