//! The server handshake: rustls over a byte stream, fed one record at a time
//! so that nothing the client sends after its Finished reaches rustls.

use std::sync::{Arc, Mutex};

use rustls::pki_types::UnixTime;
use rustls::{ConnectionTrafficSecrets, HandshakeKind, KeyLog, ServerConnection};

use crate::config::{CallerClock, TlsServerConfig};
use crate::deframe::{MAX_CIPHERTEXT_TLS12, RECORD_HEADER_LEN, content_type};
use crate::error::Error;
use crate::keys::IV_LEN;
use crate::state::{RecordState, TrafficState};
use crate::suite::{Suite, Version};

/// Key-log labels carrying the TLS 1.3 application traffic secrets (NSS key log format).
const CLIENT_LABEL: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_LABEL: &str = "SERVER_TRAFFIC_SECRET_0";

/// Captures this connection's TLS 1.3 application traffic secrets. One per
/// connection (the shared `ServerConfig` is cloned with it), so secrets of
/// concurrent handshakes cannot mix even if clients reuse a client_random.
#[derive(Default)]
struct ConnKeyLog {
    captured: Mutex<Captured>,
}

#[derive(Default)]
struct Captured {
    client_random: Vec<u8>,
    client: Option<Vec<u8>>,
    server: Option<Vec<u8>>,
}

impl core::fmt::Debug for ConnKeyLog {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ConnKeyLog")
    }
}

impl KeyLog for ConnKeyLog {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let mut c = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        c.client_random = client_random.to_vec();
        match label {
            CLIENT_LABEL => c.client = Some(secret.to_vec()),
            SERVER_LABEL => c.server = Some(secret.to_vec()),
            _ => {}
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_LABEL || label == SERVER_LABEL
    }
}

/// Where a handshake stands after [`HandshakeDriver::handle_input`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// More input is needed (send the output first).
    InProgress,
    /// The client's Finished was processed. Drain the output (it holds the
    /// server's last flight / NewSessionTickets), then call
    /// [`HandshakeDriver::into_established`].
    Complete,
}

/// What the handshake negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// Protocol version.
    pub version: Version,
    /// Cipher suite.
    pub suite: Suite,
    /// The client's SNI, if any.
    pub server_name: Option<String>,
    /// The ALPN protocol chosen, if any.
    pub alpn: Option<Vec<u8>>,
    /// Whether the session was resumed (ticket or session ID).
    pub resumed: bool,
}

/// The hand-over from the handshake to the record layer.
#[derive(Debug)]
pub struct Established {
    /// Keys, IVs, sequence numbers (and TLS 1.3 traffic secrets) per direction.
    pub traffic: TrafficState,
    /// What was negotiated.
    pub info: HandshakeInfo,
    /// Bytes the client sent after its Finished record, untouched by rustls:
    /// the record layer reads them first.
    pub leftover: Vec<u8>,
}

/// Runs one server handshake over a byte stream.
pub struct HandshakeDriver {
    conn: ServerConnection,
    keylog: Arc<ConnKeyLog>,
    clock: Arc<CallerClock>,
    /// Received bytes not given to rustls: a partial record, or (once
    /// complete) everything after the client's Finished.
    inbuf: Vec<u8>,
    /// The first bytes of the client's handshake stream (for client_random).
    hello_prefix: Vec<u8>,
    complete: bool,
    failed: bool,
}

impl core::fmt::Debug for HandshakeDriver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HandshakeDriver")
            .field("buffered", &self.inbuf.len())
            .field("complete", &self.complete)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Handshake type byte, 3 length bytes, 2 version bytes, then the 32-byte random.
const CLIENT_RANDOM_AT: usize = 6;
const CLIENT_RANDOM_LEN: usize = 32;

impl HandshakeDriver {
    /// Starts a server handshake.
    pub fn new(config: &TlsServerConfig) -> Result<Self, Error> {
        let keylog = Arc::new(ConnKeyLog::default());
        // A per-connection copy of the config (a few Arc clones) so the key log
        // sees this connection only.
        let mut cfg = (*config.rustls).clone();
        cfg.key_log = keylog.clone();
        let conn = ServerConnection::new(Arc::new(cfg)).map_err(Error::Handshake)?;
        Ok(Self {
            conn,
            keylog,
            clock: config.clock.clone(),
            inbuf: Vec::new(),
            hello_prefix: Vec::new(),
            complete: false,
            failed: false,
        })
    }

    /// Takes bytes received from the client. Whole records are handed to
    /// rustls one at a time; once the client's Finished has been processed,
    /// the rest is kept for the record layer. `now` is the wall-clock time
    /// (session and ticket lifetimes).
    ///
    /// On `Err` the handshake is dead: send what [`Self::poll_transmit`]
    /// gives (the alert) and close.
    pub fn handle_input(&mut self, now: UnixTime, input: &[u8]) -> Result<HandshakeStatus, Error> {
        if self.failed {
            return Err(Error::Usage("handshake already failed"));
        }
        self.clock.set(now);
        self.inbuf.extend_from_slice(input);
        while !self.complete && self.inbuf.len() >= RECORD_HEADER_LEN {
            let len = usize::from(u16::from_be_bytes([self.inbuf[3], self.inbuf[4]]));
            let structurally_bad = !(content_type::CHANGE_CIPHER_SPEC
                ..=content_type::APPLICATION_DATA)
                .contains(&self.inbuf[0])
                || self.inbuf[1] != 3
                || len > MAX_CIPHERTEXT_TLS12;
            let take = if structurally_bad {
                // Not TLS: rustls rejects it with the right alert at once,
                // rather than waiting for a length's worth of garbage.
                self.inbuf.len()
            } else if self.inbuf.len() < RECORD_HEADER_LEN + len {
                break;
            } else {
                RECORD_HEADER_LEN + len
            };
            if self.inbuf[0] == content_type::HANDSHAKE
                && self.hello_prefix.len() < CLIENT_RANDOM_AT + CLIENT_RANDOM_LEN
            {
                let want = CLIENT_RANDOM_AT + CLIENT_RANDOM_LEN - self.hello_prefix.len();
                let body = &self.inbuf[RECORD_HEADER_LEN.min(take)..take];
                self.hello_prefix
                    .extend_from_slice(&body[..want.min(body.len())]);
            }
            let mut rd: &[u8] = &self.inbuf[..take];
            while !rd.is_empty() {
                match self.conn.read_tls(&mut rd) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        self.failed = true;
                        return Err(Error::Internal("rustls refused input"));
                    }
                }
            }
            self.inbuf.drain(..take);
            match self.conn.process_new_packets() {
                Ok(io) => {
                    if io.plaintext_bytes_to_read() > 0 {
                        // Cannot happen: no record after Finished reaches rustls.
                        self.failed = true;
                        return Err(Error::Internal("rustls holds application data"));
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Err(Error::Handshake(e));
                }
            }
            if !self.conn.is_handshaking() {
                self.complete = true;
            }
        }
        Ok(if self.complete {
            HandshakeStatus::Complete
        } else {
            HandshakeStatus::InProgress
        })
    }

    /// Appends the bytes to send to the client to `out`; returns how many.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    }

    /// Whether there are bytes for [`Self::poll_transmit`].
    pub fn wants_transmit(&self) -> bool {
        self.conn.wants_write()
    }

    /// Whether the handshake is complete.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Hands over to the record layer. Needs a complete handshake whose output
    /// has been drained, so the server's NewSessionTickets (sealed by rustls
    /// under the application key) are counted in the write sequence number.
    pub fn into_established(self) -> Result<Established, Error> {
        if !self.complete {
            return Err(Error::Usage("handshake not complete"));
        }
        if self.conn.wants_write() {
            return Err(Error::Usage("drain poll_transmit before into_established"));
        }
        let c = &self.conn;
        let version = match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Version::Tls13,
            Some(rustls::ProtocolVersion::TLSv1_2) => Version::Tls12,
            _ => return Err(Error::Internal("no negotiated version")),
        };
        let cs = c
            .negotiated_cipher_suite()
            .ok_or(Error::Internal("no negotiated suite"))?;
        let suite = Suite::from_iana(u16::from(cs.suite())).ok_or(Error::Internal(
            "negotiated suite unknown to the record layer",
        ))?;
        let info = HandshakeInfo {
            version,
            suite,
            server_name: c.server_name().map(str::to_owned),
            alpn: c.alpn_protocol().map(<[u8]>::to_vec),
            resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
        };
        let secrets = self
            .conn
            .dangerous_extract_secrets()
            .map_err(Error::Handshake)?;
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let (tx_key, tx_iv) = key_iv(tx)?;
        let (rx_key, rx_iv) = key_iv(rx)?;

        let (read, write) = match version {
            Version::Tls13 => {
                let cap = std::mem::take(
                    &mut *self
                        .keylog
                        .captured
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()),
                );
                let (Some(cs), Some(ss)) = (cap.client, cap.server) else {
                    return Err(Error::Internal("traffic secrets were not captured"));
                };
                if self.hello_prefix.len() == CLIENT_RANDOM_AT + CLIENT_RANDOM_LEN
                    && self.hello_prefix[CLIENT_RANDOM_AT..] != cap.client_random[..]
                {
                    return Err(Error::Internal(
                        "captured secrets belong to another client_random",
                    ));
                }
                let read = RecordState::from_tls13_secret(suite, &cs, rx_seq)?;
                let write = RecordState::from_tls13_secret(suite, &ss, tx_seq)?;
                // The secrets must give exactly the keys rustls used.
                if read.key[..] != rx_key[..]
                    || read.iv != rx_iv
                    || write.key[..] != tx_key[..]
                    || write.iv != tx_iv
                {
                    return Err(Error::Internal(
                        "captured traffic secrets do not match the connection",
                    ));
                }
                (read, write)
            }
            Version::Tls12 => (
                RecordState {
                    suite,
                    secret: Arc::from([]),
                    key: rx_key.into(),
                    iv: rx_iv,
                    seq: rx_seq,
                },
                RecordState {
                    suite,
                    secret: Arc::from([]),
                    key: tx_key.into(),
                    iv: tx_iv,
                    seq: tx_seq,
                },
            ),
        };
        let traffic = TrafficState::new(read, write).map_err(Error::Decode)?;
        Ok(Established {
            traffic,
            info,
            leftover: self.inbuf,
        })
    }
}

fn key_iv(s: ConnectionTrafficSecrets) -> Result<(Vec<u8>, [u8; IV_LEN]), Error> {
    let (key, iv) = match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        // The enum is non-exhaustive; the configured suites produce only the above.
        _ => return Err(Error::Internal("extracted secrets of an unknown AEAD")),
    };
    let iv: [u8; IV_LEN] = iv
        .as_ref()
        .try_into()
        .map_err(|_| Error::Internal("extracted IV is not 12 bytes"))?;
    Ok((key.as_ref().to_vec(), iv))
}
