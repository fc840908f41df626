//! The relay's own record layer on ring AEAD, for TLS 1.3 and TLS 1.2.
//!
//! Sans-IO: [`RecordLayer::read`] takes received bytes and appends opened
//! application data to a caller buffer; [`RecordLayer::seal`] turns plaintext
//! into records of the sizes the caller planned; [`RecordLayer::poll_transmit`]
//! hands out control records (KeyUpdate, alerts) that the layer owes the
//! client. Nothing happens behind the caller's back: every output is returned.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::AlertDescription;

use crate::deframe::{self, Deframed, MAX_PLAINTEXT, RECORD_HEADER_LEN, content_type};
use crate::error::{Error, Violation};
use crate::keys::{IV_LEN, nonce};
use crate::state::{Control, MAX_PENDING_CONTROL, RecordState, TrafficState};
use crate::suite::{Aead, Suite, Version};

/// AEAD tag length of every suite here.
const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM explicit nonce length (RFC 5288 3).
const EXPLICIT_NONCE_LEN: usize = 8;
/// TLS 1.3 write sequence number at which an AES-GCM connection refreshes its
/// keys by itself: well below the 2^24.5-record confidentiality limit
/// (RFC 8446 5.5) and deterministic, so a replay seals the same records.
pub const AUTO_KEY_UPDATE_SEQ: u64 = 1 << 23;
/// Most records a TLS 1.2 AES-GCM connection seals (the limit rustls applies,
/// after RFC 8446 5.5's analysis); TLS 1.2 has no KeyUpdate, so past it the
/// caller must close the connection.
pub const TLS12_GCM_RECORD_LIMIT: u64 = 1 << 24;

/// Handshake message types the record layer looks at (RFC 8446 4).
const HS_CLIENT_HELLO: u8 = 1;
const HS_KEY_UPDATE: u8 = 24;

/// Why [`RecordLayer::read`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Every complete record was processed; at least `needed` more bytes are
    /// required for the next one. Unconsumed bytes are a partial record.
    NeedMore {
        /// Bytes still missing (exact once a header is complete).
        needed: usize,
    },
    /// The client's close_notify arrived (in this call or before). Every byte
    /// after it is ignored (RFC 8446 6.1) and counted as consumed.
    CloseNotify,
    /// The client broke the protocol: a fatal alert is queued
    /// ([`RecordLayer::poll_transmit`]) and the connection is dead.
    Violation(Violation),
    /// The client sent a fatal alert; the connection is dead.
    PeerAlert(AlertDescription),
    /// The connection had already failed before this call; nothing was read.
    Dead,
}

/// The result of one [`RecordLayer::read`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct ReadOutcome {
    /// Bytes of the input consumed; always ends on a record boundary (or at
    /// the end of the input after close_notify).
    pub consumed: usize,
    /// Records opened.
    pub records: usize,
    /// Application data bytes appended to the caller's buffer.
    pub plaintext: usize,
    /// KeyUpdates received (the read keys moved on this many times).
    pub key_updates: usize,
    /// Why it stopped.
    pub status: ReadStatus,
}

/// The result of sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[must_use]
pub struct SealOutcome {
    /// Records written (control records included).
    pub records: usize,
    /// Bytes appended to the output.
    pub bytes: usize,
}

/// Splits `len` bytes into record sizes of at most `max_record` (clamped to
/// 1..=2^14): the simplest record-size plan.
pub fn plan_records(len: usize, max_record: usize) -> Vec<usize> {
    let max = max_record.clamp(1, MAX_PLAINTEXT);
    let mut plan = Vec::with_capacity(len.div_ceil(max));
    let mut left = len;
    while left > 0 {
        let n = left.min(max);
        plan.push(n);
        left -= n;
    }
    plan
}

/// Bytes a record of `plaintext` application bytes takes on the wire.
pub fn record_wire_len(suite: Suite, plaintext: usize) -> usize {
    RECORD_HEADER_LEN
        + plaintext
        + TAG_LEN
        + match (suite.version(), suite.aead()) {
            (Version::Tls13, _) => 1,
            (Version::Tls12, Aead::Chacha20Poly1305) => 0,
            (Version::Tls12, _) => EXPLICIT_NONCE_LEN,
        }
}

/// Reassembly of post-handshake messages across records.
#[derive(Debug, Default, Clone)]
struct HsReader {
    header: [u8; 4],
    have: usize,
    body_left: usize,
    msg_type: u8,
    body_byte: Option<u8>,
}

/// A connection's record protection after the handshake.
///
/// Built from a [`TrafficState`] (from the handshake driver or from an
/// imported checkpoint); [`RecordLayer::traffic_state`] gives it back.
pub struct RecordLayer {
    state: TrafficState,
    read_key: LessSafeKey,
    write_key: LessSafeKey,
    hs: HsReader,
    scratch: Vec<u8>,
}

impl core::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn ring_key(state: &RecordState) -> Result<LessSafeKey, Error> {
    let unbound = UnboundKey::new(state.suite.aead().ring(), &state.key)
        .map_err(|_| Error::Internal("AEAD key of the wrong length"))?;
    Ok(LessSafeKey::new(unbound))
}

impl RecordLayer {
    /// Starts (or resumes, from an imported checkpoint) the record layer.
    pub fn new(state: TrafficState) -> Result<Self, Error> {
        if state.read.suite != state.suite
            || state.write.suite != state.suite
            || state.suite.version() != state.version
        {
            return Err(Error::Decode(crate::DecodeError::SuiteMismatch));
        }
        if state.pending.len() > MAX_PENDING_CONTROL
            || (state.version == Version::Tls12
                && state
                    .pending
                    .iter()
                    .any(|c| matches!(c, Control::KeyUpdate { .. })))
        {
            return Err(Error::Decode(crate::DecodeError::BadValue(
                "pending control",
            )));
        }
        Ok(Self {
            read_key: ring_key(&state.read)?,
            write_key: ring_key(&state.write)?,
            state,
            hs: HsReader::default(),
            scratch: Vec::new(),
        })
    }

    /// The current state (clone or [`Self::export`] it for a checkpoint).
    ///
    /// A post-handshake message split across records that is half read is not
    /// part of the state: checkpoint at a point where [`Self::mid_message`] is
    /// false (in practice always: KeyUpdate is five bytes in one record).
    pub fn traffic_state(&self) -> &TrafficState {
        &self.state
    }

    /// Exports the current state (see [`crate::state`] for the encoding).
    pub fn export(&self) -> Vec<u8> {
        self.state.export()
    }

    /// Whether a post-handshake message has been partly received.
    pub fn mid_message(&self) -> bool {
        self.hs.have != 0
    }

    /// The negotiated version.
    pub fn version(&self) -> Version {
        self.state.version
    }

    /// The negotiated suite.
    pub fn suite(&self) -> Suite {
        self.state.suite
    }

    /// Whether the connection is dead (fatal alert sent or received).
    pub fn is_failed(&self) -> bool {
        self.state.failed
    }

    /// Whether control records are waiting for [`Self::poll_transmit`].
    pub fn wants_transmit(&self) -> bool {
        !self.state.pending.is_empty()
    }

    /// Opens every complete record at the front of `input`, appending the
    /// application data to `plaintext`. Stops at the first partial record,
    /// close_notify, a fatal alert or a protocol violation.
    pub fn read(&mut self, input: &[u8], plaintext: &mut Vec<u8>) -> ReadOutcome {
        let mut out = ReadOutcome {
            consumed: 0,
            records: 0,
            plaintext: 0,
            key_updates: 0,
            status: ReadStatus::Dead,
        };
        if self.state.failed {
            return out;
        }
        loop {
            if self.state.received_close_notify {
                out.consumed = input.len();
                out.status = ReadStatus::CloseNotify;
                return out;
            }
            let rest = &input[out.consumed..];
            let header = match deframe::deframe(rest, self.state.version) {
                Ok(Deframed::Incomplete { needed }) => {
                    out.status = ReadStatus::NeedMore { needed };
                    return out;
                }
                Ok(Deframed::Record(h)) => h,
                Err(v) => {
                    out.status = self.fail(v);
                    return out;
                }
            };
            let record = &rest[..RECORD_HEADER_LEN + header.len];
            let before = plaintext.len();
            match self.open_record(record, plaintext, &mut out) {
                Ok(()) => {
                    out.consumed += record.len();
                    out.records += 1;
                    out.plaintext += plaintext.len() - before;
                }
                Err(status) => {
                    match status {
                        ReadStatus::CloseNotify => {
                            out.records += 1;
                            out.consumed = input.len();
                        }
                        ReadStatus::PeerAlert(_) => {
                            out.records += 1;
                            out.consumed += record.len();
                        }
                        _ => out.consumed += record.len(),
                    }
                    out.status = status;
                    return out;
                }
            }
        }
    }

    /// Marks the connection dead for a client violation and queues the alert.
    fn fail(&mut self, v: Violation) -> ReadStatus {
        tracing::debug!(violation = %v, "closing connection on client violation");
        self.state.failed = true;
        self.state.pending.clear();
        if !self.state.sent_close_notify {
            self.state.pending.push(Control::Alert(v.alert()));
        }
        ReadStatus::Violation(v)
    }

    /// Opens one whole record. Application data stays in `plaintext`; other
    /// content is handled here. `Err` carries the status that ends the read.
    fn open_record(
        &mut self,
        record: &[u8],
        plaintext: &mut Vec<u8>,
        out: &mut ReadOutcome,
    ) -> Result<(), ReadStatus> {
        let outer_type = record[0];
        let body = &record[RECORD_HEADER_LEN..];
        let version = self.state.version;
        // Which outer types may appear after the handshake: TLS 1.3 protects
        // everything as application_data (RFC 8446 5.2); change_cipher_spec is
        // only allowed before the client's Finished (RFC 8446 5), so never here.
        let allowed = match version {
            Version::Tls13 => outer_type == content_type::APPLICATION_DATA,
            Version::Tls12 => outer_type != content_type::CHANGE_CIPHER_SPEC,
        };
        if !allowed {
            return Err(self.fail(Violation::UnexpectedContentType(outer_type)));
        }

        let start = plaintext.len();
        let seq = self.state.read.seq;
        let opened = match (version, self.state.suite.aead()) {
            (Version::Tls13, _) => {
                if body.len() < TAG_LEN {
                    return Err(self.fail(Violation::BadRecordMac));
                }
                let n = Nonce::assume_unique_for_key(nonce(&self.state.read.iv, seq));
                let mut aad = [0u8; RECORD_HEADER_LEN];
                aad.copy_from_slice(&record[..RECORD_HEADER_LEN]);
                plaintext.extend_from_slice(body);
                self.read_key
                    .open_in_place(n, Aad::from(aad), &mut plaintext[start..])
                    .map(|p| p.len())
            }
            (Version::Tls12, aead_kind) => {
                let explicit = if aead_kind == Aead::Chacha20Poly1305 {
                    0
                } else {
                    EXPLICIT_NONCE_LEN
                };
                if body.len() < TAG_LEN + explicit {
                    return Err(self.fail(Violation::BadRecordMac));
                }
                let n = if explicit == 0 {
                    nonce(&self.state.read.iv, seq)
                } else {
                    // RFC 5288 3: nonce = salt (4, implicit) || explicit (8, on the wire).
                    let mut n = [0u8; IV_LEN];
                    n[..4].copy_from_slice(&self.state.read.iv[..4]);
                    n[4..].copy_from_slice(&body[..EXPLICIT_NONCE_LEN]);
                    n
                };
                let ct = &body[explicit..];
                let aad = tls12_aad(seq, outer_type, ct.len() - TAG_LEN);
                plaintext.extend_from_slice(ct);
                self.read_key
                    .open_in_place(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(aad),
                        &mut plaintext[start..],
                    )
                    .map(|p| p.len())
            }
        };
        let Ok(len) = opened else {
            plaintext.truncate(start);
            return Err(self.fail(Violation::BadRecordMac));
        };
        plaintext.truncate(start + len);
        let Some(next) = seq.checked_add(1) else {
            // 2^64 records cannot have been sent honestly.
            plaintext.truncate(start);
            return Err(self.fail(Violation::BadRecordMac));
        };
        self.state.read.seq = next;

        // TLS 1.3: strip zero padding, the last non-zero byte is the type (RFC 8446 5.4).
        let inner_type = match version {
            Version::Tls13 => {
                let Some(pos) = plaintext[start..].iter().rposition(|&b| b != 0) else {
                    plaintext.truncate(start);
                    return Err(self.fail(Violation::MissingInnerContentType));
                };
                let t = plaintext[start + pos];
                plaintext.truncate(start + pos);
                t
            }
            Version::Tls12 => outer_type,
        };
        let len = plaintext.len() - start;
        if len > MAX_PLAINTEXT {
            plaintext.truncate(start);
            return Err(self.fail(Violation::PlaintextOverflow(len)));
        }
        if inner_type == content_type::APPLICATION_DATA {
            if self.hs.have != 0 {
                // A handshake message must not be interleaved with other records.
                plaintext.truncate(start);
                return Err(self.fail(Violation::UnexpectedContentType(inner_type)));
            }
            return Ok(());
        }
        // Control content: move it out of the caller's buffer.
        let mut content = core::mem::take(&mut self.scratch);
        content.clear();
        content.extend_from_slice(&plaintext[start..]);
        plaintext.truncate(start);
        let r = match inner_type {
            content_type::ALERT => self.on_alert(&content),
            content_type::HANDSHAKE => self.on_handshake(&content, out),
            t => Err(self.fail(Violation::UnexpectedContentType(t))),
        };
        self.scratch = content;
        r
    }

    fn on_alert(&mut self, content: &[u8]) -> Result<(), ReadStatus> {
        if self.hs.have != 0 {
            return Err(self.fail(Violation::UnexpectedContentType(content_type::ALERT)));
        }
        // Alerts are two bytes and never fragmented or coalesced (RFC 8446 5.1).
        let &[level, desc] = content else {
            if content.is_empty() {
                return Err(self.fail(Violation::EmptyFragment));
            }
            return Err(self.fail(Violation::BadAlert));
        };
        let desc = AlertDescription::from(desc);
        if desc == AlertDescription::CloseNotify {
            self.state.received_close_notify = true;
            return Err(ReadStatus::CloseNotify);
        }
        // user_canceled is a warning in both versions (RFC 8446 6.1); TLS 1.2
        // warnings other than close_notify are ignored (RFC 5246 7.2.2), as rustls does.
        let warning = match self.state.version {
            Version::Tls13 => desc == AlertDescription::UserCanceled,
            Version::Tls12 => level == 1,
        };
        if warning {
            tracing::debug!(?desc, "ignoring warning alert from client");
            return Ok(());
        }
        self.state.failed = true;
        self.state.pending.clear();
        Err(ReadStatus::PeerAlert(desc))
    }

    fn on_handshake(&mut self, content: &[u8], out: &mut ReadOutcome) -> Result<(), ReadStatus> {
        if content.is_empty() {
            return Err(self.fail(Violation::EmptyFragment));
        }
        let mut i = 0;
        while i < content.len() {
            if self.hs.have < 4 {
                self.hs.header[self.hs.have] = content[i];
                self.hs.have += 1;
                i += 1;
                if self.hs.have < 4 {
                    continue;
                }
                let [t, a, b, c] = self.hs.header;
                let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                self.hs.msg_type = t;
                self.hs.body_left = len;
                self.hs.body_byte = None;
                match (self.state.version, t) {
                    (Version::Tls13, HS_KEY_UPDATE) if len != 1 => {
                        return Err(self.fail(Violation::BadKeyUpdate));
                    }
                    (Version::Tls13, HS_KEY_UPDATE) => {}
                    (Version::Tls12, HS_KEY_UPDATE) => {
                        return Err(self.fail(Violation::KeyUpdateInTls12));
                    }
                    // TLS 1.2 renegotiation: refused with a no_renegotiation
                    // warning (RFC 5746 4.4, RFC 5246 7.2.2), as rustls does.
                    (Version::Tls12, HS_CLIENT_HELLO) => {}
                    (_, t) => return Err(self.fail(Violation::UnexpectedHandshake(t))),
                }
            } else {
                let n = self.hs.body_left.min(content.len() - i);
                if self.hs.msg_type == HS_KEY_UPDATE && n > 0 {
                    self.hs.body_byte = Some(content[i]);
                }
                self.hs.body_left -= n;
                i += n;
            }
            if self.hs.have == 4 && self.hs.body_left == 0 {
                // A whole message.
                self.hs.have = 0;
                match self.hs.msg_type {
                    HS_KEY_UPDATE => {
                        let update_requested = match self.hs.body_byte {
                            Some(0) => false,
                            Some(1) => true,
                            _ => return Err(self.fail(Violation::BadKeyUpdate)),
                        };
                        // The read key changes right after this message, so it
                        // must end the record (RFC 8446 5.1).
                        if i != content.len() {
                            return Err(self.fail(Violation::HandshakeSpansKeyChange));
                        }
                        self.on_key_update(update_requested)?;
                        out.key_updates += 1;
                    }
                    _ => {
                        let c = Control::Alert(AlertDescription::NoRenegotiation);
                        if !self.state.pending.contains(&c) {
                            self.push_control(c);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn on_key_update(&mut self, update_requested: bool) -> Result<(), ReadStatus> {
        let next = match self.state.read.updated() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(%e, "KeyUpdate derivation failed");
                return Err(self.fail(Violation::BadKeyUpdate));
            }
        };
        let key = match ring_key(&next) {
            Ok(k) => k,
            Err(_) => return Err(self.fail(Violation::BadKeyUpdate)),
        };
        self.state.read = next;
        self.read_key = key;
        // RFC 8446 4.6.3: answer update_requested with our own KeyUpdate before
        // the next application data; one already queued answers it too.
        let queued = self
            .state
            .pending
            .iter()
            .any(|c| matches!(c, Control::KeyUpdate { .. }));
        if update_requested && !queued && !self.state.sent_close_notify {
            self.push_control(Control::KeyUpdate {
                update_requested: false,
            });
        }
        Ok(())
    }

    fn push_control(&mut self, c: Control) {
        // The queue discipline (one KeyUpdate, one no_renegotiation, one
        // close_notify, one fatal alert) keeps this within the bound.
        if self.state.pending.len() < MAX_PENDING_CONTROL {
            self.state.pending.push(c);
        }
    }

    /// Queues a KeyUpdate of our own (TLS 1.3 only); `update_requested` asks
    /// the client to update its keys too. Sealed by the next
    /// [`Self::poll_transmit`] or [`Self::seal`].
    pub fn initiate_key_update(&mut self, update_requested: bool) -> Result<(), Error> {
        if self.state.version != Version::Tls13 {
            return Err(Error::Usage("KeyUpdate exists only in TLS 1.3"));
        }
        self.check_writable()?;
        for c in &mut self.state.pending {
            if let Control::KeyUpdate {
                update_requested: r,
            } = c
            {
                *r |= update_requested;
                return Ok(());
            }
        }
        self.push_control(Control::KeyUpdate { update_requested });
        Ok(())
    }

    /// Queues our close_notify; after it is sealed nothing more can be sealed.
    pub fn close(&mut self) {
        let c = Control::Alert(AlertDescription::CloseNotify);
        if !self.state.failed && !self.state.sent_close_notify && !self.state.pending.contains(&c) {
            self.push_control(c);
        }
    }

    /// Queues a fatal alert (e.g. `internal_error` when the backend is gone
    /// before any data could be relayed); the connection is dead once it is
    /// sealed by [`Self::poll_transmit`].
    pub fn send_alert(&mut self, desc: AlertDescription) {
        let c = Control::Alert(desc);
        if !self.state.failed && !self.state.sent_close_notify && !self.state.pending.contains(&c) {
            self.push_control(c);
        }
    }

    fn check_writable(&self) -> Result<(), Error> {
        if self.state.failed {
            return Err(Error::Usage("connection has failed"));
        }
        if self.state.sent_close_notify
            || self
                .state
                .pending
                .contains(&Control::Alert(AlertDescription::CloseNotify))
        {
            return Err(Error::Usage("close_notify already sent"));
        }
        Ok(())
    }

    /// Seals the control records the layer owes the client (KeyUpdate,
    /// alerts) into `out`.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> Result<SealOutcome, Error> {
        let mut done = SealOutcome::default();
        let pending = core::mem::take(&mut self.state.pending);
        for c in pending {
            if self.state.sent_close_notify {
                break;
            }
            match c {
                Control::KeyUpdate { update_requested } => {
                    if self.state.failed {
                        continue;
                    }
                    let msg = [HS_KEY_UPDATE, 0, 0, 1, u8::from(update_requested)];
                    done.bytes += self.seal_record(content_type::HANDSHAKE, &msg, out)?;
                    done.records += 1;
                    let next = self.state.write.updated()?;
                    self.write_key = ring_key(&next)?;
                    self.state.write = next;
                }
                Control::Alert(desc) => {
                    let warning = matches!(
                        desc,
                        AlertDescription::CloseNotify
                            | AlertDescription::UserCanceled
                            | AlertDescription::NoRenegotiation
                    );
                    if self.state.failed && warning {
                        continue;
                    }
                    let level = if warning { 1 } else { 2 };
                    done.bytes +=
                        self.seal_record(content_type::ALERT, &[level, u8::from(desc)], out)?;
                    done.records += 1;
                    if desc == AlertDescription::CloseNotify {
                        self.state.sent_close_notify = true;
                    }
                    if !warning {
                        self.state.failed = true;
                        break;
                    }
                }
            }
        }
        Ok(done)
    }

    /// Seals `plaintext` as application data records whose plaintext sizes are
    /// `plan` (each 1..=2^14, summing to `plaintext.len()`), after any pending
    /// control records. The same state, plaintext and plan always give the
    /// same bytes: AEAD nonces derive from the sequence number (RFC 8446 5.3).
    pub fn seal(
        &mut self,
        plaintext: &[u8],
        plan: &[usize],
        out: &mut Vec<u8>,
    ) -> Result<SealOutcome, Error> {
        self.check_writable()?;
        let mut total = 0usize;
        for &n in plan {
            if n == 0 || n > MAX_PLAINTEXT {
                return Err(Error::Usage("a planned record size is not within 1..=2^14"));
            }
            total += n;
        }
        if total != plaintext.len() {
            return Err(Error::Usage(
                "the record plan does not add up to the plaintext length",
            ));
        }
        if self.state.version == Version::Tls12
            && self.state.suite.aead() != Aead::Chacha20Poly1305
            && self.state.write.seq.saturating_add(plan.len() as u64) > TLS12_GCM_RECORD_LIMIT
        {
            return Err(Error::Usage(
                "TLS 1.2 AES-GCM record limit reached: close the connection",
            ));
        }
        let mut done = self.poll_transmit(out)?;
        let mut off = 0;
        for &n in plan {
            if self.state.version == Version::Tls13
                && self.state.suite.aead() != Aead::Chacha20Poly1305
                && self.state.write.seq >= AUTO_KEY_UPDATE_SEQ
            {
                self.push_control(Control::KeyUpdate {
                    update_requested: false,
                });
                let d = self.poll_transmit(out)?;
                done.records += d.records;
                done.bytes += d.bytes;
            }
            done.bytes += self.seal_record(
                content_type::APPLICATION_DATA,
                &plaintext[off..off + n],
                out,
            )?;
            done.records += 1;
            off += n;
        }
        Ok(done)
    }

    /// Seals `plaintext` in records of at most 2^14 bytes.
    pub fn seal_all(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<SealOutcome, Error> {
        let plan = plan_records(plaintext.len(), MAX_PLAINTEXT);
        self.seal(plaintext, &plan, out)
    }

    /// Seals one record of `typ` into `out`; returns the bytes written.
    fn seal_record(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        let seq = self.state.write.seq;
        let next = seq
            .checked_add(1)
            .ok_or(Error::Internal("write sequence number exhausted"))?;
        let suite = self.state.suite;
        let wire = record_wire_len(suite, data.len());
        let start = out.len();
        out.reserve(wire);
        let body_len = (wire - RECORD_HEADER_LEN) as u16;
        let n = nonce(&self.state.write.iv, seq);
        match self.state.version {
            Version::Tls13 => {
                let header = [
                    content_type::APPLICATION_DATA,
                    3,
                    3,
                    (body_len >> 8) as u8,
                    body_len as u8,
                ];
                out.extend_from_slice(&header);
                out.extend_from_slice(data);
                out.push(typ);
                let tag = self
                    .write_key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(header),
                        &mut out[start + RECORD_HEADER_LEN..],
                    )
                    .map_err(|_| Error::Internal("AEAD seal"))?;
                out.extend_from_slice(tag.as_ref());
            }
            Version::Tls12 => {
                out.extend_from_slice(&[typ, 3, 3, (body_len >> 8) as u8, body_len as u8]);
                let explicit = suite.aead() != Aead::Chacha20Poly1305;
                if explicit {
                    // The explicit nonce is iv[4..] xor seq: unique per record and
                    // deterministic, as rustls does (RFC 5288 3 lets the sender choose).
                    out.extend_from_slice(&n[4..]);
                }
                let ct_start = out.len();
                out.extend_from_slice(data);
                let aad = tls12_aad(seq, typ, data.len());
                let tag = self
                    .write_key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(aad),
                        &mut out[ct_start..],
                    )
                    .map_err(|_| Error::Internal("AEAD seal"))?;
                out.extend_from_slice(tag.as_ref());
            }
        }
        self.state.write.seq = next;
        debug_assert_eq!(out.len() - start, wire);
        Ok(wire)
    }
}

/// TLS 1.2 additional data: seq_num || type || version || length (RFC 5246 6.2.3.3).
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
