//! TCP (RFC 9293) segments, options (RFC 7323, RFC 2018) and sequence space.

use core::cmp::Ordering;
use core::fmt;
use core::net::Ipv4Addr;
use core::ops;

use crate::checksum;
use crate::error::{Layer, WireError};
use crate::field;
use crate::ipv4::IpProtocol;

/// Length of a TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;
/// Longest TCP header: the data offset is 4 bits of 32-bit words.
pub const TCP_MAX_HEADER_LEN: usize = 60;
/// Option space in the longest header.
pub const TCP_MAX_OPTIONS_LEN: usize = TCP_MAX_HEADER_LEN - TCP_HEADER_LEN;

mod off {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// A TCP sequence number: a point in the 2^32 sequence space, where
/// arithmetic wraps and order is decided by the signed distance
/// (RFC 9293 (3.4), RFC 1982).
///
/// `a < b` means `b` is ahead of `a` by less than 2^31. The order only makes
/// sense for numbers less than 2^31 apart, which holds within one
/// connection's windows; two numbers exactly 2^31 apart each compare less
/// than the other, so this is `PartialOrd` only, with no `Ord`, and there are
/// inherent [`max`](Self::max)/[`min`](Self::min) instead of the std ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// The later of the two in sequence space.
    #[must_use]
    pub fn max(self, other: SeqNumber) -> SeqNumber {
        if self > other { self } else { other }
    }

    /// The earlier of the two in sequence space.
    #[must_use]
    pub fn min(self, other: SeqNumber) -> SeqNumber {
        if self < other { self } else { other }
    }
}

/// Moves forward modulo 2^32. The offset is truncated to 32 bits: an offset
/// of 2^31 or more leaves the result unordered against `self` (smoltcp
/// panics there; wire input must not be able to do that, so we wrap).
impl ops::Add<usize> for SeqNumber {
    type Output = SeqNumber;
    fn add(self, rhs: usize) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(rhs as u32))
    }
}

/// Moves backward modulo 2^32, with the same truncation as `Add`.
impl ops::Sub<usize> for SeqNumber {
    type Output = SeqNumber;
    fn sub(self, rhs: usize) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(rhs as u32))
    }
}

impl ops::AddAssign<usize> for SeqNumber {
    fn add_assign(&mut self, rhs: usize) {
        *self = *self + rhs;
    }
}

impl ops::SubAssign<usize> for SeqNumber {
    fn sub_assign(&mut self, rhs: usize) {
        *self = *self - rhs;
    }
}

/// The signed distance from `rhs` to `self`, wrapping: positive when `self`
/// is ahead.
impl ops::Sub<SeqNumber> for SeqNumber {
    type Output = i32;
    fn sub(self, rhs: SeqNumber) -> i32 {
        self.0.wrapping_sub(rhs.0) as i32
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &SeqNumber) -> Option<Ordering> {
        Some((*self - *other).cmp(&0))
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The eight TCP control bits, raw, so that hostile combinations (SYN|FIN,
/// SYN|RST, no flags at all) can be parsed, counted and answered.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// Push.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// Acknowledgment field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// Urgent pointer field is significant.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECN-Echo (RFC 3168).
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// Congestion window reduced (RFC 3168).
    pub const CWR: TcpFlags = TcpFlags(0x80);

    const NAMES: [(TcpFlags, &'static str); 8] = [
        (TcpFlags::FIN, "FIN"),
        (TcpFlags::SYN, "SYN"),
        (TcpFlags::RST, "RST"),
        (TcpFlags::PSH, "PSH"),
        (TcpFlags::ACK, "ACK"),
        (TcpFlags::URG, "URG"),
        (TcpFlags::ECE, "ECE"),
        (TcpFlags::CWR, "CWR"),
    ];

    /// No flags.
    pub const fn empty() -> TcpFlags {
        TcpFlags(0)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: TcpFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: TcpFlags) {
        self.0 |= other.0;
    }

    /// Clears the flags of `other`.
    pub fn remove(&mut self, other: TcpFlags) {
        self.0 &= !other.0;
    }

    /// FIN is set.
    pub const fn fin(self) -> bool {
        self.contains(TcpFlags::FIN)
    }

    /// SYN is set.
    pub const fn syn(self) -> bool {
        self.contains(TcpFlags::SYN)
    }

    /// RST is set.
    pub const fn rst(self) -> bool {
        self.contains(TcpFlags::RST)
    }

    /// PSH is set.
    pub const fn psh(self) -> bool {
        self.contains(TcpFlags::PSH)
    }

    /// ACK is set.
    pub const fn ack(self) -> bool {
        self.contains(TcpFlags::ACK)
    }

    /// URG is set.
    pub const fn urg(self) -> bool {
        self.contains(TcpFlags::URG)
    }

    /// ECE is set.
    pub const fn ece(self) -> bool {
        self.contains(TcpFlags::ECE)
    }

    /// CWR is set.
    pub const fn cwr(self) -> bool {
        self.contains(TcpFlags::CWR)
    }
}

impl ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl ops::BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

impl ops::BitAnd for TcpFlags {
    type Output = TcpFlags;
    fn bitand(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & rhs.0)
    }
}

impl ops::Not for TcpFlags {
    type Output = TcpFlags;
    fn not(self) -> TcpFlags {
        TcpFlags(!self.0)
    }
}

/// `SYN|ACK`, or `none`.
impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for (flag, name) in TcpFlags::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TcpFlags({self})")
    }
}

/// A zero-copy view of a TCP segment. The buffer must be exactly the segment
/// (the IPv4 payload), because the checksum covers all of it.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the fixed header and the header length
    /// the data offset declares, and that the data offset is at least 5.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < TCP_HEADER_LEN {
            return Err(WireError::truncated(Layer::Tcp, TCP_HEADER_LEN, len));
        }
        let header_len = self.header_len();
        if header_len < TCP_HEADER_LEN {
            return Err(WireError::malformed(Layer::Tcp, "data offset below 5"));
        }
        if len < header_len {
            return Err(WireError::truncated(Layer::Tcp, header_len, len));
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> SeqNumber {
        SeqNumber(field::read_u32(self.buffer.as_ref(), off::SEQ))
    }

    /// Acknowledgment number (meaningful only with ACK).
    pub fn ack_number(&self) -> SeqNumber {
        SeqNumber(field::read_u32(self.buffer.as_ref(), off::ACK))
    }

    /// Data offset in 32-bit words.
    pub fn data_offset(&self) -> u8 {
        field::read_u8(self.buffer.as_ref(), off::DATA_OFF) >> 4
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset()) * 4
    }

    /// Control bits.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(field::read_u8(self.buffer.as_ref(), off::FLAGS))
    }

    /// Receive window, unscaled as on the wire.
    pub fn window_len(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::WINDOW)
    }

    /// Checksum as stored.
    pub fn checksum(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::CHECKSUM)
    }

    /// Urgent pointer (ignored by [`TcpRepr`]).
    pub fn urgent_at(&self) -> u16 {
        field::read_u16(self.buffer.as_ref(), off::URGENT)
    }

    /// Option bytes, padding included.
    pub fn options(&self) -> &[u8] {
        field::slice(self.buffer.as_ref(), TCP_HEADER_LEN, self.header_len())
    }

    /// Data after the header.
    pub fn payload(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        field::slice(buf, self.header_len(), buf.len())
    }

    /// Sequence space the segment uses: payload plus one each for SYN and FIN.
    pub fn segment_len(&self) -> usize {
        let flags = self.flags();
        self.payload().len() + usize::from(flags.syn()) + usize::from(flags.fin())
    }

    /// Whether the checksum is correct for a segment from `src` to `dst`.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let buf = self.buffer.as_ref();
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        checksum::combine(&[
            checksum::pseudo_header_v4(src, dst, IpProtocol::Tcp, len),
            checksum::data(buf),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn buf(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the source port.
    pub fn set_src_port(&mut self, value: u16) {
        field::write_u16(self.buf(), off::SRC_PORT, value);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, value: u16) {
        field::write_u16(self.buf(), off::DST_PORT, value);
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, value: SeqNumber) {
        field::write_u32(self.buf(), off::SEQ, value.0);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, value: SeqNumber) {
        field::write_u32(self.buf(), off::ACK, value.0);
    }

    /// Sets the header length in bytes (rounded down to words, at most 60).
    /// Also clears the reserved bits that share the byte, as RFC 9293 asks
    /// of senders.
    pub fn set_header_len(&mut self, value: usize) {
        let words = (value / 4).min(15) as u8;
        field::write_u8(self.buf(), off::DATA_OFF, words << 4);
    }

    /// Sets the control bits.
    pub fn set_flags(&mut self, value: TcpFlags) {
        field::write_u8(self.buf(), off::FLAGS, value.0);
    }

    /// Sets the window.
    pub fn set_window_len(&mut self, value: u16) {
        field::write_u16(self.buf(), off::WINDOW, value);
    }

    /// Sets the stored checksum.
    pub fn set_checksum(&mut self, value: u16) {
        field::write_u16(self.buf(), off::CHECKSUM, value);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, value: u16) {
        field::write_u16(self.buf(), off::URGENT, value);
    }

    /// Mutable option bytes (per the current header length).
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        field::slice_mut(self.buf(), TCP_HEADER_LEN, end)
    }

    /// Mutable payload (per the current header length).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let buf = self.buf();
        let len = buf.len();
        field::slice_mut(buf, start, len)
    }

    /// Computes and stores the checksum for a segment from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let buf = self.buffer.as_ref();
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let sum = checksum::combine(&[
            checksum::pseudo_header_v4(src, dst, IpProtocol::Tcp, len),
            checksum::data(buf),
        ]);
        self.set_checksum(!sum);
    }
}

/// The TCP timestamps option (RFC 7323 (3)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpTimestamp {
    /// The sender's timestamp clock.
    pub tsval: u32,
    /// The echoed timestamp, valid when ACK is set.
    pub tsecr: u32,
}

/// The TCP options the relay understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpOptions {
    /// Maximum segment size (kind 2), on SYNs.
    pub mss: Option<u16>,
    /// Window scale shift (kind 3), on SYNs, as received: RFC 7323 (2.3) says
    /// to use 14 for larger values, which is the engine's business.
    pub window_scale: Option<u8>,
    /// SACK-permitted (kind 4), on SYNs.
    pub sack_permitted: bool,
    /// SACK blocks (kind 5) as `(left, right)` edges, the right edge
    /// exclusive (RFC 2018 (3)). Filled from the front; `emit` skips `None`.
    pub sack_blocks: [Option<(SeqNumber, SeqNumber)>; 4],
    /// Timestamps (kind 8).
    pub timestamp: Option<TcpTimestamp>,
}

mod kind {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WS: u8 = 3;
    pub const SACK_PERM: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TS: u8 = 8;
}

/// How [`TcpOptions::emit`] lays the options out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Linux's layout (`tcp_options_write`): every option 32-bit aligned with
    /// NOPs, SACK-permitted packed with the timestamp when both are present.
    Aligned,
    /// No NOPs, padded with EOL at the end; used only when the aligned layout
    /// would not fit 40 bytes but this one does.
    Compact,
}

impl TcpOptions {
    /// Parses option bytes (the region between the fixed header and the
    /// data). Unknown kinds are skipped by their length; so are known kinds
    /// with the wrong length, as Linux's `tcp_parse_options` does. A length
    /// below 2, a missing length byte or an option running past the end is
    /// [`WireError::Malformed`]. A later duplicate wins.
    pub fn parse(bytes: &[u8]) -> Result<TcpOptions, WireError> {
        let mut opts = TcpOptions::default();
        let mut at = 0usize;
        while let Some(&kind) = bytes.get(at) {
            match kind {
                kind::EOL => break,
                kind::NOP => {
                    at += 1;
                    continue;
                }
                _ => {}
            }
            let Some(&len) = bytes.get(at + 1) else {
                return Err(WireError::malformed(Layer::Tcp, "option length missing"));
            };
            let len = usize::from(len);
            if len < 2 {
                return Err(WireError::malformed(Layer::Tcp, "option length below 2"));
            }
            let Some(body) = bytes.get(at + 2..at + len) else {
                return Err(WireError::malformed(
                    Layer::Tcp,
                    "option runs past the header",
                ));
            };
            match (kind, len) {
                (kind::MSS, 4) => opts.mss = Some(field::read_u16(body, 0)),
                (kind::WS, 3) => opts.window_scale = Some(field::read_u8(body, 0)),
                (kind::SACK_PERM, 2) => opts.sack_permitted = true,
                (kind::SACK, _) if len > 2 && (len - 2) % 8 == 0 => {
                    opts.sack_blocks = [None; 4];
                    for (slot, block) in opts.sack_blocks.iter_mut().zip(body.chunks_exact(8)) {
                        *slot = Some((
                            SeqNumber(field::read_u32(block, 0)),
                            SeqNumber(field::read_u32(block, 4)),
                        ));
                    }
                }
                (kind::TS, 10) => {
                    opts.timestamp = Some(TcpTimestamp {
                        tsval: field::read_u32(body, 0),
                        tsecr: field::read_u32(body, 4),
                    });
                }
                _ => {}
            }
            at += len;
        }
        Ok(opts)
    }

    /// Number of `Some` SACK blocks.
    pub fn sack_block_count(&self) -> usize {
        self.sack_blocks.iter().flatten().count()
    }

    fn aligned_len(&self, blocks: usize) -> usize {
        let mut len = 0;
        if self.mss.is_some() {
            len += 4;
        }
        if self.timestamp.is_some() {
            len += 12;
        } else if self.sack_permitted {
            len += 4;
        }
        if self.window_scale.is_some() {
            len += 4;
        }
        if blocks > 0 {
            len += 4 + 8 * blocks;
        }
        len
    }

    fn compact_len(&self, blocks: usize) -> usize {
        let mut len = 0;
        if self.mss.is_some() {
            len += 4;
        }
        if self.sack_permitted {
            len += 2;
        }
        if self.timestamp.is_some() {
            len += 10;
        }
        if self.window_scale.is_some() {
            len += 3;
        }
        if blocks > 0 {
            len += 2 + 8 * blocks;
        }
        len.next_multiple_of(4)
    }

    /// Picks the layout and the number of SACK blocks that fit 40 bytes:
    /// Linux's aligned layout when it fits, else the compact one, else SACK
    /// blocks are dropped from the end until one fits. The compact fallback
    /// matters because any option set parsed from a header fits compactly,
    /// so parse → emit never loses information.
    fn layout(&self) -> (Layout, usize, usize) {
        let count = self.sack_block_count();
        for blocks in (1..=count).rev() {
            let aligned = self.aligned_len(blocks);
            if aligned <= TCP_MAX_OPTIONS_LEN {
                return (Layout::Aligned, blocks, aligned);
            }
            let compact = self.compact_len(blocks);
            if compact <= TCP_MAX_OPTIONS_LEN {
                return (Layout::Compact, blocks, compact);
            }
        }
        // Without SACK blocks the aligned layout is at most 24 bytes.
        (Layout::Aligned, 0, self.aligned_len(0))
    }

    /// Bytes [`emit`](Self::emit) writes: a multiple of 4, at most 40.
    pub fn emitted_len(&self) -> usize {
        self.layout().2
    }

    /// Writes the options into `buf` and returns the bytes written, which is
    /// [`emitted_len`](Self::emitted_len). If the options would need more
    /// than 40 bytes, trailing SACK blocks are left out. Writes past the end
    /// of a too-short `buf` are dropped.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let (layout, blocks, len) = self.layout();
        let mut w = Writer { buf, at: 0 };
        match layout {
            Layout::Aligned => {
                if let Some(mss) = self.mss {
                    w.bytes(&[kind::MSS, 4]);
                    w.u16(mss);
                }
                if let Some(ts) = self.timestamp {
                    if self.sack_permitted {
                        w.bytes(&[kind::SACK_PERM, 2]);
                    } else {
                        w.bytes(&[kind::NOP, kind::NOP]);
                    }
                    w.bytes(&[kind::TS, 10]);
                    w.u32(ts.tsval);
                    w.u32(ts.tsecr);
                } else if self.sack_permitted {
                    w.bytes(&[kind::NOP, kind::NOP, kind::SACK_PERM, 2]);
                }
                if let Some(ws) = self.window_scale {
                    w.bytes(&[kind::NOP, kind::WS, 3, ws]);
                }
                if blocks > 0 {
                    w.bytes(&[kind::NOP, kind::NOP]);
                    self.emit_sack(&mut w, blocks);
                }
            }
            Layout::Compact => {
                if let Some(mss) = self.mss {
                    w.bytes(&[kind::MSS, 4]);
                    w.u16(mss);
                }
                if self.sack_permitted {
                    w.bytes(&[kind::SACK_PERM, 2]);
                }
                if let Some(ts) = self.timestamp {
                    w.bytes(&[kind::TS, 10]);
                    w.u32(ts.tsval);
                    w.u32(ts.tsecr);
                }
                if let Some(ws) = self.window_scale {
                    w.bytes(&[kind::WS, 3, ws]);
                }
                if blocks > 0 {
                    self.emit_sack(&mut w, blocks);
                }
            }
        }
        while w.at < len {
            w.bytes(&[kind::EOL]);
        }
        len
    }

    fn emit_sack(&self, w: &mut Writer<'_>, blocks: usize) {
        // At most 4 blocks, so the length fits a byte.
        w.bytes(&[kind::SACK, (2 + 8 * blocks) as u8]);
        for (left, right) in self.sack_blocks.iter().flatten().take(blocks) {
            w.u32(left.0);
            w.u32(right.0);
        }
    }
}

/// Appends to a buffer, dropping what does not fit.
struct Writer<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        field::write_bytes(self.buf, self.at, b);
        self.at += b.len();
    }

    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
}

/// A parsed TCP segment. The payload borrows from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpRepr<'a> {
    /// Source port, never 0 after parse.
    pub src_port: u16,
    /// Destination port, never 0 after parse.
    pub dst_port: u16,
    /// Sequence number of the first octet of the segment (of the SYN, if set).
    pub seq_number: SeqNumber,
    /// Next sequence number the sender expects; meaningful iff `flags` has
    /// ACK. Without ACK it is carried as received (normally 0) so that
    /// parse → emit is exact; senders should put 0 there.
    pub ack_number: SeqNumber,
    /// Raw control bits; any combination is representable.
    pub flags: TcpFlags,
    /// Window as on the wire, before any scaling.
    pub window_len: u16,
    /// Understood options; the others are dropped.
    pub options: TcpOptions,
    /// Segment data.
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses a segment from `src` to `dst`. `verify_checksum` is off only
    /// for fuzzing or when a NIC has verified the checksum.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &TcpPacket<&'a T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        verify_checksum: bool,
    ) -> Result<TcpRepr<'a>, WireError> {
        packet.check_len()?;
        if verify_checksum && !packet.verify_checksum(src, dst) {
            return Err(WireError::BadChecksum { layer: Layer::Tcp });
        }
        // Port 0 is reserved (RFC 6335); no real peer sends from or to it.
        if packet.src_port() == 0 || packet.dst_port() == 0 {
            return Err(WireError::malformed(Layer::Tcp, "port 0"));
        }
        let options = TcpOptions::parse(packet.options())?;
        let buffer: &'a [u8] = packet.buffer.as_ref();
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            options,
            payload: field::slice(buffer, packet.header_len(), buffer.len()),
        })
    }

    /// Header length [`emit`](Self::emit) writes: 20 plus the emitted
    /// options.
    pub fn header_len(&self) -> usize {
        TCP_HEADER_LEN + self.options.emitted_len()
    }

    /// Header plus payload.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Sequence space the segment uses: payload plus one each for SYN and FIN.
    pub fn segment_len(&self) -> usize {
        self.payload.len() + usize::from(self.flags.syn()) + usize::from(self.flags.fin())
    }

    /// Writes header, options and payload, then the checksum for a segment
    /// from `src` to `dst`. `packet` must be exactly
    /// [`buffer_len`](Self::buffer_len) bytes: the checksum covers the whole
    /// buffer. The urgent pointer is written as 0.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(self.header_len());
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(0);
        self.options.emit(packet.options_mut());
        let out = packet.payload_mut();
        let n = out.len().min(self.payload.len());
        if let (Some(dst_bytes), Some(src_bytes)) = (out.get_mut(..n), self.payload.get(..n)) {
            dst_bytes.copy_from_slice(src_bytes);
        }
        packet.fill_checksum(src, dst);
    }
}

/// One line for logs and test failures, tcpdump-like.
impl fmt::Display for TcpRepr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TCP {} > {} [{}] seq={}",
            self.src_port, self.dst_port, self.flags, self.seq_number
        )?;
        if self.flags.ack() {
            write!(f, " ack={}", self.ack_number)?;
        }
        write!(f, " win={} len={}", self.window_len, self.payload.len())?;
        let o = &self.options;
        if let Some(mss) = o.mss {
            write!(f, " mss={mss}")?;
        }
        if let Some(ws) = o.window_scale {
            write!(f, " ws={ws}")?;
        }
        if o.sack_permitted {
            f.write_str(" sackOK")?;
        }
        if let Some(ts) = o.timestamp {
            write!(f, " ts={}/{}", ts.tsval, ts.tsecr)?;
        }
        for (left, right) in o.sack_blocks.iter().flatten() {
            write!(f, " sack={left}-{right}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A Linux SYN (10.0.0.1:54321 -> 10.0.0.2:443) with the options in the
    /// order Linux writes them: MSS 1460, SACK-permitted + TS, NOP + WS 7.
    pub(crate) const SYN: [u8; 40] = [
        0xd4, 0x31, 0x01, 0xbb, // ports
        0x1a, 0x2b, 0x3c, 0x4d, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0xa0, 0x02, 0xfa, 0xf0, // data offset 10, SYN, window 64240
        0x2a, 0x66, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
        0x04, 0x02, 0x08, 0x0a, // SACK-permitted, TS
        0x00, 0x01, 0xe2, 0x40, // tsval 123456
        0x00, 0x00, 0x00, 0x00, // tsecr 0
        0x01, 0x03, 0x03, 0x07, // NOP, WS 7
    ];

    fn syn_repr() -> TcpRepr<'static> {
        TcpRepr {
            src_port: 54321,
            dst_port: 443,
            seq_number: SeqNumber(0x1a2b_3c4d),
            ack_number: SeqNumber(0),
            flags: TcpFlags::SYN,
            window_len: 64240,
            options: TcpOptions {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                sack_blocks: [None; 4],
                timestamp: Some(TcpTimestamp {
                    tsval: 123_456,
                    tsecr: 0,
                }),
            },
            payload: &[],
        }
    }

    fn emit_vec(repr: &TcpRepr<'_>) -> Vec<u8> {
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
        out
    }

    fn seq(n: u32) -> SeqNumber {
        SeqNumber(n)
    }

    #[test]
    fn syn_getters() {
        let p = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 54321);
        assert_eq!(p.dst_port(), 443);
        assert_eq!(p.seq_number(), seq(0x1a2b_3c4d));
        assert_eq!(p.ack_number(), seq(0));
        assert_eq!(p.data_offset(), 10);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), TcpFlags::SYN);
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.checksum(), 0x2a66);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.options(), &SYN[20..]);
        assert!(p.payload().is_empty());
        assert_eq!(p.segment_len(), 1);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(p.into_inner().len(), 40);
    }

    #[test]
    fn syn_round_trip_is_byte_exact() {
        let p = TcpPacket::new_checked(&SYN[..]).unwrap();
        let repr = TcpRepr::parse(&p, SRC, DST, true).unwrap();
        assert_eq!(repr, syn_repr());
        assert_eq!(repr.header_len(), 40);
        assert_eq!(repr.buffer_len(), 40);
        assert_eq!(repr.segment_len(), 1);
        assert_eq!(emit_vec(&repr), SYN);
    }

    #[test]
    fn data_segment_round_trip() {
        let repr = TcpRepr {
            src_port: 443,
            dst_port: 54321,
            seq_number: seq(0xffff_fff0),
            ack_number: seq(0x1a2b_3c4e),
            flags: TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN,
            window_len: 501,
            options: TcpOptions {
                timestamp: Some(TcpTimestamp {
                    tsval: 7,
                    tsecr: 123_456,
                }),
                sack_blocks: [
                    Some((seq(100), seq(200))),
                    Some((seq(300), seq(400))),
                    None,
                    None,
                ],
                ..TcpOptions::default()
            },
            payload: b"hello, world",
        };
        let bytes = emit_vec(&repr);
        // NOP NOP TS (12) + NOP NOP SACK with two blocks (20).
        assert_eq!(repr.header_len(), 20 + 32);
        assert_eq!(&bytes[20..24], &[1, 1, 8, 10]);
        assert_eq!(&bytes[32..36], &[1, 1, 5, 18]);
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        assert!(p.verify_checksum(SRC, DST));
        assert_eq!(p.payload(), b"hello, world");
        assert_eq!(p.segment_len(), 13);
        let parsed = TcpRepr::parse(&p, SRC, DST, true).unwrap();
        assert_eq!(parsed, repr);
        assert_eq!(parsed.segment_len(), 13);
        assert_eq!(
            parsed.to_string(),
            "TCP 443 > 54321 [FIN|PSH|ACK] seq=4294967280 ack=439041102 win=501 len=12 ts=7/123456 sack=100-200 sack=300-400"
        );
    }

    #[test]
    fn setters() {
        let mut b = [0u8; 28];
        let mut p = TcpPacket::new_unchecked(&mut b[..]);
        p.set_src_port(1);
        p.set_dst_port(2);
        p.set_seq_number(seq(3));
        p.set_ack_number(seq(4));
        p.set_header_len(24);
        p.set_flags(TcpFlags::RST | TcpFlags::ACK);
        p.set_window_len(5);
        p.set_checksum(6);
        p.set_urgent_at(7);
        p.options_mut().copy_from_slice(&[1, 1, 1, 0]);
        p.payload_mut().copy_from_slice(&[9; 4]);
        assert_eq!(
            (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number()),
            (1, 2, seq(3), seq(4))
        );
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), TcpFlags::RST | TcpFlags::ACK);
        assert_eq!((p.window_len(), p.checksum(), p.urgent_at()), (5, 6, 7));
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[9; 4]);
        p.set_header_len(1000);
        assert_eq!(p.header_len(), 60);
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..SYN.len() {
            let p = TcpPacket::new_unchecked(&SYN[..len]);
            assert!(TcpPacket::new_checked(&SYN[..len]).is_err(), "{len}");
            let err = TcpRepr::parse(&p, SRC, DST, false).unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::Truncated {
                        layer: Layer::Tcp,
                        ..
                    }
                ),
                "{len}"
            );
            assert!(TcpRepr::parse(&p, SRC, DST, true).is_err());
            let _ = (p.payload(), p.options(), p.flags(), p.segment_len());
        }
    }

    #[test]
    fn data_offset_below_five() {
        for words in 0..5u8 {
            let mut b = SYN;
            b[12] = words << 4;
            let err = TcpRepr::parse(&TcpPacket::new_unchecked(&b[..]), SRC, DST, false);
            assert_eq!(
                err,
                Err(WireError::malformed(Layer::Tcp, "data offset below 5"))
            );
        }
    }

    #[test]
    fn bad_checksum() {
        let mut b = SYN;
        b[30] ^= 0x40; // tsval
        let p = TcpPacket::new_unchecked(&b[..]);
        assert_eq!(
            TcpRepr::parse(&p, SRC, DST, true),
            Err(WireError::BadChecksum { layer: Layer::Tcp })
        );
        assert!(TcpRepr::parse(&p, SRC, DST, false).is_ok());
    }

    #[test]
    fn port_zero() {
        let mut b = SYN;
        b[0] = 0;
        b[1] = 0;
        let p = TcpPacket::new_unchecked(&b[..]);
        assert_eq!(
            TcpRepr::parse(&p, SRC, DST, false),
            Err(WireError::malformed(Layer::Tcp, "port 0"))
        );
    }

    #[test]
    fn hostile_flag_combinations_are_representable() {
        for flags in [
            TcpFlags::SYN | TcpFlags::FIN,
            TcpFlags::SYN | TcpFlags::RST,
            TcpFlags::empty(),
            TcpFlags(0xff),
        ] {
            let mut repr = syn_repr();
            repr.flags = flags;
            let bytes = emit_vec(&repr);
            let p = TcpPacket::new_checked(&bytes[..]).unwrap();
            assert_eq!(TcpRepr::parse(&p, SRC, DST, true).unwrap().flags, flags);
        }
        assert_eq!((TcpFlags::SYN | TcpFlags::FIN).to_string(), "FIN|SYN");
        assert_eq!(TcpFlags::empty().to_string(), "none");
        assert_eq!(
            format!("{:?}", TcpFlags::SYN | TcpFlags::ACK),
            "TcpFlags(SYN|ACK)"
        );
    }

    #[test]
    fn flag_helpers() {
        let all = [
            (TcpFlags::FIN, TcpFlags::fin as fn(TcpFlags) -> bool),
            (TcpFlags::SYN, TcpFlags::syn),
            (TcpFlags::RST, TcpFlags::rst),
            (TcpFlags::PSH, TcpFlags::psh),
            (TcpFlags::ACK, TcpFlags::ack),
            (TcpFlags::URG, TcpFlags::urg),
            (TcpFlags::ECE, TcpFlags::ece),
            (TcpFlags::CWR, TcpFlags::cwr),
        ];
        let mut acc = TcpFlags::empty();
        for (flag, getter) in all {
            assert!(getter(flag));
            assert!(!getter(!flag));
            assert!(!getter(TcpFlags::empty()));
            acc |= flag;
        }
        assert_eq!(acc.bits(), 0xff);
        let mut f = TcpFlags::SYN | TcpFlags::ACK;
        assert!(f.contains(TcpFlags::SYN));
        assert!(!f.contains(TcpFlags::SYN | TcpFlags::FIN));
        assert!(f.intersects(TcpFlags::SYN | TcpFlags::FIN));
        f.remove(TcpFlags::SYN);
        assert_eq!(f, TcpFlags::ACK);
        f.insert(TcpFlags::FIN);
        assert_eq!(f & TcpFlags::FIN, TcpFlags::FIN);
        assert!(TcpFlags::empty().is_empty());
    }

    #[test]
    fn seq_arithmetic_wraps() {
        assert_eq!(seq(u32::MAX) + 1, seq(0));
        assert_eq!(seq(0) - 1, seq(u32::MAX));
        assert_eq!(seq(5) - seq(3), 2);
        assert_eq!(seq(3) - seq(5), -2);
        assert_eq!(seq(2) - seq(u32::MAX - 1), 4);
        let mut s = seq(u32::MAX - 1);
        s += 3;
        assert_eq!(s, seq(1));
        s -= 3;
        assert_eq!(s, seq(u32::MAX - 1));
        assert_eq!(seq(7).to_string(), "7");
    }

    #[test]
    fn seq_comparisons_across_the_wrap() {
        let before = seq(u32::MAX - 10);
        let after = seq(10);
        assert!(before < after);
        assert!(after > before);
        assert!(before <= before);
        assert!(after >= after);
        assert_eq!(before.max(after), after);
        assert_eq!(after.max(before), after);
        assert_eq!(before.min(after), before);
        assert_eq!(after.min(before), before);
        // Ordinary order away from the wrap.
        assert!(seq(1) < seq(2));
        assert!(seq(0x7fff_ffff) > seq(0));
        // 2^31 - 1 apart is still ordered; 2^31 apart is not consistent.
        assert!(seq(0) < seq(0x7fff_ffff));
        assert!(seq(0) > seq(0x8000_0001));
        assert!(seq(0) < seq(0x8000_0000) && seq(0x8000_0000) < seq(0));
    }

    #[test]
    fn each_option_kind() {
        let o = TcpOptions::parse(&[2, 4, 0x23, 0x28]).unwrap();
        assert_eq!(o.mss, Some(9000));
        let o = TcpOptions::parse(&[3, 3, 14]).unwrap();
        assert_eq!(o.window_scale, Some(14));
        let o = TcpOptions::parse(&[4, 2]).unwrap();
        assert!(o.sack_permitted);
        let o = TcpOptions::parse(&[8, 10, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(
            o.timestamp,
            Some(TcpTimestamp {
                tsval: 1,
                tsecr: u32::MAX
            })
        );
        let mut sack = vec![5, 34];
        for i in 0..8u32 {
            sack.extend_from_slice(&(i * 100).to_be_bytes());
        }
        let o = TcpOptions::parse(&sack).unwrap();
        assert_eq!(o.sack_block_count(), 4);
        assert_eq!(o.sack_blocks[0], Some((seq(0), seq(100))));
        assert_eq!(o.sack_blocks[3], Some((seq(600), seq(700))));
        let o = TcpOptions::parse(&sack[..10]).ok();
        assert_eq!(o, None, "SACK length says 34, only 10 bytes");
        sack[1] = 10;
        let o = TcpOptions::parse(&sack[..10]).unwrap();
        assert_eq!(o.sack_block_count(), 1);
        // NOPs, then EOL: what follows EOL is padding, even if it looks bad.
        let o = TcpOptions::parse(&[1, 1, 4, 2, 0, 0xff, 0]).unwrap();
        assert!(o.sack_permitted);
        assert_eq!(TcpOptions::parse(&[]).unwrap(), TcpOptions::default());
    }

    #[test]
    fn unknown_and_wrong_length_options_are_skipped() {
        // Kind 30 (MPTCP) with 4 bytes, kind 34 (TFO) with 2, MSS with length 3.
        let o = TcpOptions::parse(&[30, 4, 0xaa, 0xbb, 34, 2, 2, 3, 0x10, 4, 2]).unwrap();
        assert_eq!(
            o,
            TcpOptions {
                sack_permitted: true,
                ..TcpOptions::default()
            }
        );
        // SACK with a length that is not 2 + 8n, TS with length 6, WS with 4.
        let o = TcpOptions::parse(&[5, 6, 0, 0, 0, 0, 8, 6, 0, 0, 0, 0, 3, 4, 1, 1]).unwrap();
        assert_eq!(o, TcpOptions::default());
    }

    #[test]
    fn bad_option_lengths() {
        let malformed = |r: Result<TcpOptions, WireError>| {
            matches!(
                r,
                Err(WireError::Malformed {
                    layer: Layer::Tcp,
                    ..
                })
            )
        };
        assert!(malformed(TcpOptions::parse(&[2, 0, 0, 0])), "length 0");
        assert!(malformed(TcpOptions::parse(&[2, 1, 0, 0])), "length 1");
        assert!(malformed(TcpOptions::parse(&[99, 0])), "unknown, length 0");
        assert!(malformed(TcpOptions::parse(&[1, 1, 2, 8, 0, 0])), "overrun");
        assert!(
            malformed(TcpOptions::parse(&[1, 1, 1, 2])),
            "length missing"
        );
        assert!(malformed(TcpOptions::parse(&[8, 255])), "overrun by far");

        // Through a whole segment: a zero length in the SYN's options.
        let mut b = SYN;
        b[38] = 0; // the WS option's length byte
        let r = TcpRepr::parse(&TcpPacket::new_unchecked(&b[..]), SRC, DST, false);
        assert_eq!(
            r,
            Err(WireError::malformed(Layer::Tcp, "option length below 2"))
        );
    }

    #[test]
    fn option_emit_layouts() {
        let mut buf = [0xeeu8; 40];
        // SACK-permitted alone: NOP NOP SACK_PERM.
        let o = TcpOptions {
            sack_permitted: true,
            ..TcpOptions::default()
        };
        assert_eq!(o.emit(&mut buf), 4);
        assert_eq!(&buf[..4], &[1, 1, 4, 2]);
        // WS alone: NOP WS.
        let o = TcpOptions {
            window_scale: Some(9),
            ..TcpOptions::default()
        };
        assert_eq!(o.emit(&mut buf), 4);
        assert_eq!(&buf[..4], &[1, 3, 3, 9]);
        // Nothing.
        assert_eq!(TcpOptions::default().emitted_len(), 0);
        assert_eq!(TcpOptions::default().emit(&mut buf), 0);
    }

    #[test]
    fn sack_blocks_that_do_not_fit_are_dropped_from_the_end() {
        let blocks = [
            Some((seq(1), seq(2))),
            Some((seq(3), seq(4))),
            Some((seq(5), seq(6))),
            Some((seq(7), seq(8))),
        ];
        // TS (12) + 3 blocks aligned (28) = 40; compact 10 + 34 = 44: 3 blocks.
        let o = TcpOptions {
            timestamp: Some(TcpTimestamp { tsval: 1, tsecr: 2 }),
            sack_blocks: blocks,
            ..TcpOptions::default()
        };
        let mut buf = [0u8; 40];
        assert_eq!(o.emit(&mut buf), 40);
        let back = TcpOptions::parse(&buf).unwrap();
        assert_eq!(back.sack_blocks, [blocks[0], blocks[1], blocks[2], None]);
        assert_eq!(back.timestamp, o.timestamp);

        // Everything at once: aligned is 20 + 4 + 8n (SACK-permitted shares
        // the timestamp's word), so two blocks fit aligned.
        let all = TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            sack_blocks: blocks,
            timestamp: Some(TcpTimestamp { tsval: 1, tsecr: 2 }),
        };
        let mut buf = [0xeeu8; 40];
        assert_eq!(all.emit(&mut buf), 40);
        assert_eq!(&buf[20..24], &[1, 1, 5, 18]);
        let back = TcpOptions::parse(&buf).unwrap();
        assert_eq!(back.sack_blocks, [blocks[0], blocks[1], None, None]);
        assert_eq!(
            (
                back.mss,
                back.window_scale,
                back.sack_permitted,
                back.timestamp
            ),
            (Some(1460), Some(7), true, all.timestamp)
        );

        // TS + WS + three blocks arrive in 39 bytes without NOPs, but need 44
        // aligned: the compact layout keeps all three blocks.
        let o = TcpOptions {
            window_scale: Some(7),
            sack_blocks: [blocks[0], blocks[1], blocks[2], None],
            timestamp: Some(TcpTimestamp { tsval: 1, tsecr: 2 }),
            ..TcpOptions::default()
        };
        assert_eq!(o.emitted_len(), 40);
        let mut buf = [0xeeu8; 40];
        assert_eq!(o.emit(&mut buf), 40);
        assert_eq!(TcpOptions::parse(&buf).unwrap(), o);
        assert_eq!(buf[39], 0, "EOL padding in {buf:?}");

        // header_len agrees with emit.
        let repr = TcpRepr {
            options: all,
            ..syn_repr()
        };
        assert_eq!(repr.header_len(), 60);
        let bytes = emit_vec(&repr);
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.header_len(), 60);
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn sack_holes_are_skipped() {
        let o = TcpOptions {
            sack_blocks: [None, Some((seq(1), seq(2))), None, Some((seq(3), seq(4)))],
            ..TcpOptions::default()
        };
        let mut buf = [0u8; 40];
        let n = o.emit(&mut buf);
        assert_eq!(n, 20);
        let back = TcpOptions::parse(&buf[..n]).unwrap();
        assert_eq!(
            back.sack_blocks,
            [Some((seq(1), seq(2))), Some((seq(3), seq(4))), None, None]
        );
    }

    #[test]
    fn emit_into_short_buffer_does_not_panic() {
        let repr = TcpRepr {
            payload: b"abcdef",
            ..syn_repr()
        };
        for len in 0..repr.buffer_len() {
            let mut b = vec![0u8; len];
            repr.emit(&mut TcpPacket::new_unchecked(&mut b[..]), SRC, DST);
        }
    }
}
