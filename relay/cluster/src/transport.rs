//! The tokio tasks of the backplane thread: the listener, one dialer and
//! one membership timer per peer, and per live connection a reader and a
//! writer. They move bytes and time; `shared` decides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relay_replication::{Deframer, Hello, Message, PROTOCOL_VERSION};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsStream;

use crate::counters::bump;
use crate::front::{BeatKeys, BeatPath, FrontKey, KEY_LEN};
use crate::handle::DisconnectReason;
use crate::shared::{PeerSlot, Shared, Wake};
use crate::sockopt;
use crate::tls::{Tls, is_certificate_error, names_peer};

/// Read buffer of a connection: a few records' worth.
const READ_BUF: usize = 64 * 1024;
/// Time a closing connection is given to send its TLS close_notify.
const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// Time shutdown waits for the live connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// The backplane thread's main task: runs until `shutdown` turns true.
pub(crate) async fn run(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    beats: [(Option<std::net::UdpSocket>, BeatPath); 2],
    tls: Tls,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "backplane: cannot use the listening socket");
            return;
        }
    };
    for slot in &shared.slots {
        tokio::spawn(membership(shared.clone(), slot.clone()));
        tokio::spawn(dial_loop(shared.clone(), slot.clone(), tls.clone()));
    }
    for (socket, path) in beats {
        if let Some(socket) = socket {
            tokio::spawn(beat_path(shared.clone(), socket, path));
        }
    }
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, from)) => {
                    tokio::spawn(inbound(shared.clone(), tls.clone(), tcp, from));
                }
                Err(e) => {
                    // Out of descriptors and the like: do not spin on it.
                    tracing::warn!(error = %e, "backplane: accept failed");
                    tokio::time::sleep(shared.cfg.reconnect_min).await;
                }
            },
            r = shutdown.wait_for(|s| *s) => {
                let _ = r;
                break;
            }
        }
    }
    drop(listener);
    // Close every live connection cleanly (the peers see a TLS close, not
    // a reset); what is still handshaking is dropped with the runtime.
    for slot in &shared.slots {
        let st = slot.lock();
        if let Some(live) = &st.live {
            let g = live.generation;
            drop(st);
            shared.close(slot, g, DisconnectReason::Shutdown);
        }
    }
    let all_closed = async {
        for slot in &shared.slots {
            let mut rx = slot.live_watch.subscribe();
            let _ = rx.wait_for(|g| *g == 0).await;
        }
    };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, all_closed).await;
}

/// Drives one peer's membership: heartbeats every interval, up and down.
async fn membership(shared: Arc<Shared>, slot: Arc<PeerSlot>) {
    loop {
        let at = {
            let st = slot.lock();
            let at = st.peer.poll_timeout();
            st.local_pending.map_or(at, |(local, _)| at.min(local))
        };
        tokio::select! {
            _ = tokio::time::sleep_until(shared.clock.deadline(at)) => {
                let mut wake = Wake::default();
                {
                    let mut st = slot.lock();
                    st.peer.handle_timeout(shared.clock.now());
                    shared.drain_membership(&slot, &mut st, &mut wake);
                    shared.release_local(&slot, &mut st, &mut wake);
                }
                shared.finish(&slot, wake);
            }
            _ = slot.membership_wake.notified() => {}
        }
    }
}

/// A datagram heartbeat path (see `front`): a beat to every peer we
/// share keys with each interval, and the peers' beats in.
async fn beat_path(shared: Arc<Shared>, socket: std::net::UdpSocket, path: BeatPath) {
    let socket = match tokio::net::UdpSocket::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, ?path, "cannot use the heartbeat socket");
            return;
        }
    };
    let mut tick = tokio::time::interval(shared.cfg.heartbeat.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for slot in &shared.slots {
                    let to = match path {
                        BeatPath::Front => slot.spec.front,
                        BeatPath::Backplane => Some(slot.spec.addr),
                    };
                    let Some(to) = to else { continue };
                    let beat = slot
                        .lock()
                        .beat_keys
                        .as_mut()
                        .map(|k| k.path(path).seal(shared.id));
                    if let Some(beat) = beat {
                        match socket.send_to(&beat, to).await {
                            Ok(_) if path == BeatPath::Front => bump(&shared.counters.front_sent),
                            Ok(_) => {}
                            Err(e) => tracing::debug!(%to, ?path, error = %e, "heartbeat send failed"),
                        }
                    }
                }
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => shared.beat_datagram(path, &buf[..n], from),
                Err(e) => tracing::debug!(error = %e, ?path, "heartbeat receive failed"),
            },
        }
    }
}

/// The datagram heartbeat keys for this connection's session, both ends
/// alike (RFC 8446 section 7.5). `None` only if the session cannot export,
/// which a finished TLS 1.3 handshake always can.
fn beat_keys(stream: &TlsStream<TcpStream>) -> Option<BeatKeys> {
    let export = |path: BeatPath| -> Option<FrontKey> {
        let mut material = [0u8; KEY_LEN];
        let exported = match stream {
            TlsStream::Client(s) => s
                .get_ref()
                .1
                .export_keying_material(&mut material, path.label(), None)
                .map(|_| ()),
            TlsStream::Server(s) => s
                .get_ref()
                .1
                .export_keying_material(&mut material, path.label(), None)
                .map(|_| ()),
        };
        match exported {
            Ok(()) => Some(FrontKey::new(&material)),
            Err(e) => {
                tracing::warn!(error = %e, ?path, "no heartbeat key from this session");
                None
            }
        }
    };
    Some(BeatKeys {
        front: export(BeatPath::Front)?,
        backplane: export(BeatPath::Backplane)?,
    })
}

/// An inbound connection: TLS, identity, hellos, then the connection.
async fn inbound(shared: Arc<Shared>, tls: Tls, tcp: TcpStream, from: SocketAddr) {
    bump(&shared.counters.connections_accepted);
    tune(&tcp);
    let handshake = tokio::time::timeout(
        shared.cfg.handshake_timeout,
        accept_handshake(&shared, &tls, tcp, from),
    );
    let (stream, slot, hello, deframer) = match handshake.await {
        Ok(Some(c)) => c,
        // Counted and logged where it failed.
        Ok(None) => return,
        Err(_) => {
            bump(&shared.counters.rejected_handshake);
            tracing::info!(%from, "backplane: inbound handshake timed out");
            return;
        }
    };
    connection(
        shared,
        slot,
        TlsStream::Server(stream),
        false,
        hello,
        deframer,
    )
    .await;
}

type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The acceptor's side. Nothing of ours is sent to the other end before
/// its certificate and its hello name a configured peer at the address it
/// comes from (the TLS handshake aside).
async fn accept_handshake(
    shared: &Shared,
    tls: &Tls,
    tcp: TcpStream,
    from: SocketAddr,
) -> Option<(ServerStream, Arc<PeerSlot>, Hello, Deframer)> {
    let mut stream = match tls.acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            handshake_failed(shared, from, &e);
            return None;
        }
    };
    let unauthorised = |why: &str| {
        bump(&shared.counters.rejected_unauthorised);
        tracing::warn!(%from, why, "backplane: connection refused");
    };
    let from_ip = from.ip().to_canonical();
    let candidates: Vec<Arc<PeerSlot>> = {
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        let Some(leaf) = leaf else {
            // The verifier demands a certificate; kept as a check anyway.
            unauthorised("no client certificate");
            return None;
        };
        shared
            .slots
            .iter()
            .filter(|s| {
                s.spec.addr.ip().to_canonical() == from_ip && names_peer(leaf, &s.spec.name)
            })
            .cloned()
            .collect()
    };
    if candidates.is_empty() {
        unauthorised("its certificate names no configured peer at this address");
        return None;
    }
    let (hello, deframer) = read_hello(shared, &mut stream, from).await?;
    let Some(slot) = candidates.into_iter().find(|s| s.spec.id == hello.relay) else {
        unauthorised("its hello claims a relay its certificate and address do not");
        return None;
    };
    if !hello_version_ok(shared, &hello) {
        return None;
    }
    if shared.would_lose(&slot, false) {
        bump(&shared.counters.duplicates_closed);
        tracing::debug!(
            peer = slot.spec.id,
            "backplane: duplicate inbound connection closed"
        );
        return None;
    }
    if let Err(e) = send_hello(shared, &mut stream).await {
        tracing::info!(%from, error = %e, "backplane: inbound connection lost during hello");
        return None;
    }
    Some((stream, slot, hello, deframer))
}

/// Dials the peer whenever it has no live connection, with bounded
/// exponential backoff.
async fn dial_loop(shared: Arc<Shared>, slot: Arc<PeerSlot>, tls: Tls) {
    let cfg = &shared.cfg;
    let preferred = shared.preferred(slot.spec.id, true);
    let mut backoff = cfg.reconnect_min;
    let mut live = slot.live_watch.subscribe();
    loop {
        if live.wait_for(|g| *g == 0).await.is_err() {
            return;
        }
        if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if !preferred {
            // The peer's outbound connection is the one that wins: give
            // it a head start, so that both dialing rarely makes a
            // duplicate to close.
            tokio::time::sleep(cfg.reconnect_min.saturating_mul(4).min(cfg.reconnect_max)).await;
            if *live.borrow() != 0 {
                continue;
            }
        }
        let attempt = tokio::time::timeout(cfg.handshake_timeout, dial(&shared, &slot, &tls));
        // A connection the peer dialed may become live meanwhile: then this
        // dial is abandoned, rather than replace a working connection a
        // moment after it started (the tie-break would let ours win).
        let attempt = tokio::select! {
            r = attempt => r,
            _ = live.wait_for(|g| *g != 0) => {
                tracing::debug!(peer = slot.spec.id, "backplane: connected meanwhile; dial abandoned");
                continue;
            }
        };
        match attempt {
            Ok(Some((stream, hello, deframer))) => {
                let started = std::time::Instant::now();
                connection(
                    shared.clone(),
                    slot.clone(),
                    TlsStream::Client(stream),
                    true,
                    hello,
                    deframer,
                )
                .await;
                // A connection that lasted resets the backoff; one that
                // keeps failing at once (refused after the hellos) backs off.
                if started.elapsed() >= cfg.reconnect_max {
                    backoff = cfg.reconnect_min;
                }
            }
            Ok(None) => {}
            Err(_) => {
                bump(&shared.counters.rejected_handshake);
                tracing::debug!(peer = slot.spec.id, "backplane: dial timed out");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2).min(cfg.reconnect_max);
    }
}

/// One dial attempt: TCP from our backplane address, TLS with the peer's
/// name, our hello, its hello.
async fn dial(
    shared: &Shared,
    slot: &PeerSlot,
    tls: &Tls,
) -> Option<(ClientStream, Hello, Deframer)> {
    let to = slot.spec.addr;
    bump(&shared.counters.dials);
    let tcp = match connect_from(shared.cfg.listen, to).await {
        Ok(t) => t,
        Err(e) => {
            // The peer is not up yet, or gone: the usual case, not a warning.
            tracing::debug!(peer = slot.spec.id, %to, error = %e, "backplane: dial failed");
            return None;
        }
    };
    tune(&tcp);
    // Validated in BackplaneConfig::validate.
    let name = ServerName::try_from(slot.spec.name.clone()).ok()?;
    let mut stream = match tls.connector.connect(name, tcp).await {
        Ok(s) => s,
        Err(e) => {
            handshake_failed(shared, to, &e);
            return None;
        }
    };
    if let Err(e) = send_hello(shared, &mut stream).await {
        tracing::info!(peer = slot.spec.id, error = %e, "backplane: connection lost during hello");
        return None;
    }
    let (hello, deframer) = read_hello(shared, &mut stream, to).await?;
    if hello.relay != slot.spec.id {
        bump(&shared.counters.rejected_unauthorised);
        tracing::warn!(
            peer = slot.spec.id,
            claimed = hello.relay,
            "backplane: the relay we dialed claims another id"
        );
        return None;
    }
    if !hello_version_ok(shared, &hello) {
        return None;
    }
    Some((stream, hello, deframer))
}

/// A TCP connection to `to`, bound to our backplane IP when we have one,
/// so that the peer sees us come from the address it knows us by.
/// Replication messages are small and latency-bound (flows wait for
/// their acknowledgements): no Nagle, and no retransmission backoff past
/// a second.
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    if let Err(e) = sockopt::cap_retransmission_backoff(tcp, sockopt::RTO_CEILING_MIN) {
        // Older kernels (before 6.15): the connection works, it only stalls
        // longer under loss.
        tracing::debug!(error = %e, "backplane: cannot cap the retransmission backoff");
    }
}

async fn connect_from(listen: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if !listen.ip().is_unspecified() && listen.is_ipv4() == to.is_ipv4() {
        socket.bind(SocketAddr::new(listen.ip(), 0))?;
    }
    socket.connect(to).await
}

fn handshake_failed(shared: &Shared, addr: SocketAddr, e: &std::io::Error) {
    if is_certificate_error(e) {
        bump(&shared.counters.rejected_unauthorised);
        tracing::warn!(%addr, error = %e, "backplane: certificate refused");
    } else {
        bump(&shared.counters.rejected_handshake);
        tracing::info!(%addr, error = %e, "backplane: TLS handshake failed");
    }
}

fn hello_version_ok(shared: &Shared, hello: &Hello) -> bool {
    if hello.version == PROTOCOL_VERSION {
        return true;
    }
    shared.violation(
        hello.relay,
        &relay_replication::Error::ProtocolVersion {
            ours: PROTOCOL_VERSION,
            theirs: hello.version,
        },
    );
    false
}

/// Reads up to the first envelope, which must be the other end's hello;
/// returns it with the deframer (it may hold the bytes that followed).
async fn read_hello<S: AsyncRead + Unpin>(
    shared: &Shared,
    stream: &mut S,
    from: SocketAddr,
) -> Option<(Hello, Deframer)> {
    let mut deframer = Deframer::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match deframer.pop() {
            Ok(Some(env)) => {
                shared.counters.message_in(env.message.kind());
                return match env.message {
                    Message::Hello(h) if env.stream.relay == h.relay => Some((h, deframer)),
                    m => {
                        bump(&shared.counters.protocol_errors);
                        tracing::warn!(%from, kind = %m.kind(), "backplane: expected a hello; closing");
                        None
                    }
                };
            }
            Ok(None) => {}
            Err(e) => {
                bump(&shared.counters.rejected_malformed);
                tracing::warn!(%from, error = %e, "backplane: malformed hello; closing");
                return None;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) => {
                // The other end refused us (or gave up) after the TLS handshake.
                bump(&shared.counters.rejected_handshake);
                tracing::info!(%from, "backplane: closed before its hello");
                return None;
            }
            Ok(n) => {
                shared
                    .counters
                    .bytes_in
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                deframer.push(&buf[..n]);
            }
            Err(e) => {
                handshake_failed(shared, from, &e);
                return None;
            }
        }
    }
}

async fn send_hello<S: AsyncWrite + Unpin>(shared: &Shared, s: &mut S) -> std::io::Result<()> {
    let hello = shared.hello_bytes();
    shared.counters.messages_out(&hello);
    shared
        .counters
        .bytes_out
        .fetch_add(hello.len() as u64, std::sync::atomic::Ordering::Relaxed);
    write_all_flush(s, &hello).await
}

async fn write_all_flush<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}

/// How long a connection may stay silent, or a write blocked, before it
/// is dropped. Membership does not depend on it (datagram beats tell a
/// live link), and a lossy link stalls a TCP stream while the same segment
/// is lost again and again: retransmissions at 0.2, 0.6, 1.4, 2.4, 3.4 s...
/// with the backoff capped at a second ([`tune`]). Short of that, a lossy
/// backplane would be reconnected, and every flow re-seeded, over and over.
fn connection_patience(shared: &Shared) -> Duration {
    shared
        .cfg
        .heartbeat
        .dead_after()
        .saturating_mul(2)
        .max(CONNECTION_PATIENCE_MIN)
}

/// The least [`connection_patience`]: eight retransmissions of one segment
/// with the backoff capped at a second (six with the uncapped backoff of
/// older kernels). At 10% loss each way a round trip fails with
/// probability 0.19, so a 3 s patience (four failures in a row, 1.3e-3)
/// cut a lossy pair now and then in the lab; nine in a row is 3e-7.
const CONNECTION_PATIENCE_MIN: Duration = Duration::from_secs(8);

/// Runs an authenticated connection until it ends: installs it (or not:
/// tie-break), then a reader and a writer; each stops the other.
async fn connection(
    shared: Arc<Shared>,
    slot: Arc<PeerSlot>,
    stream: TlsStream<TcpStream>,
    outbound: bool,
    hello: Hello,
    deframer: Deframer,
) {
    let keys = beat_keys(&stream);
    let Some((generation, close)) = shared.install(&slot, hello, outbound, keys) else {
        return;
    };
    let (rd, wr) = tokio::io::split(stream);
    tokio::join!(
        read_loop(&shared, &slot, generation, rd, deframer, close.clone()),
        write_loop(&shared, &slot, generation, wr, close),
    );
    shared.uninstall(&slot, generation);
}

async fn read_loop(
    shared: &Shared,
    slot: &PeerSlot,
    generation: u64,
    mut rd: ReadHalf<TlsStream<TcpStream>>,
    mut deframer: Deframer,
    mut close: watch::Receiver<Option<DisconnectReason>>,
) {
    // Heartbeats come every interval; this much silence is a dead or hung
    // connection even if the datagram beats keep the peer from being down.
    let idle = connection_patience(shared);
    let mut buf = vec![0u8; READ_BUF];
    // The hello's read may have brought more envelopes: process them first.
    let mut received = 0;
    loop {
        if let Err(reason) = shared.process(slot, generation, &mut deframer, received) {
            shared.close(slot, generation, reason);
            return;
        }
        let read = tokio::select! {
            r = tokio::time::timeout(idle, rd.read(&mut buf)) => r,
            _ = close.wait_for(Option::is_some) => return,
        };
        received = match read {
            Ok(Ok(0)) => {
                shared.close(slot, generation, DisconnectReason::Closed);
                return;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(peer = slot.spec.id, error = %e, "backplane: read failed");
                shared.close(slot, generation, DisconnectReason::Io);
                return;
            }
            Err(_) => {
                tracing::warn!(peer = slot.spec.id, "backplane: connection silent; closing");
                shared.close(slot, generation, DisconnectReason::Idle);
                return;
            }
        };
        shared
            .counters
            .bytes_in
            .fetch_add(received as u64, std::sync::atomic::Ordering::Relaxed);
        deframer.push(&buf[..received]);
    }
}

async fn write_loop(
    shared: &Shared,
    slot: &PeerSlot,
    generation: u64,
    mut wr: WriteHalf<TlsStream<TcpStream>>,
    mut close: watch::Receiver<Option<DisconnectReason>>,
) {
    // A write that cannot complete for this long means the peer does not
    // read, and our queues must not grow behind it.
    let stall = connection_patience(shared);
    loop {
        let buf = match shared.collect(slot, generation) {
            Ok(b) => b,
            Err(reason) => {
                shared.close(slot, generation, reason);
                break;
            }
        };
        if !buf.is_empty() {
            // One write (and one flush) for everything collected.
            let written = tokio::select! {
                r = tokio::time::timeout(stall, write_all_flush(&mut wr, &buf)) => r,
                _ = close.wait_for(Option::is_some) => break,
            };
            match written {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => {
                    tracing::debug!(peer = slot.spec.id, error = %e, "backplane: write failed");
                    shared.close(slot, generation, DisconnectReason::Io);
                }
                Err(_) => {
                    tracing::warn!(
                        peer = slot.spec.id,
                        "backplane: peer does not read; closing"
                    );
                    shared.close(slot, generation, DisconnectReason::Stalled);
                }
            }
            break;
        }
        tokio::select! {
            _ = slot.queue.writer_wake.notified() => {}
            _ = close.wait_for(Option::is_some) => break,
        }
    }
    // This writer may have taken a wake-up meant for the next connection's.
    slot.queue.writer_wake.notify_one();
    let _ = tokio::time::timeout(CLOSE_GRACE, wr.shutdown()).await;
}
