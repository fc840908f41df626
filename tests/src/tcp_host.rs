//! Runs relay-tcp connections over a frame device: the frame loop a worker
//! will have, reduced to what the engine's interop tests need (demux by
//! 4-tuple, a listener, timers, MAC learning, resets for strangers).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use relay_datapath::{Device, DeviceError};
use relay_tcp::{Connection, FourTuple, Instant, Listener};
use relay_wire::{
    EtherType, EthernetAddress, EthernetRepr, IpProtocol, Ipv4Repr, TcpFrame, TcpRepr,
};

/// A host running engine connections on one device.
pub struct TcpHost<D: Device> {
    device: D,
    local_mac: EthernetAddress,
    macs: HashMap<Ipv4Addr, EthernetAddress>,
    listener: Option<(SocketAddrV4, Listener)>,
    /// Open connections by 4-tuple (local = this host).
    pub conns: HashMap<FourTuple, Connection>,
    epoch: std::time::Instant,
    scratch: Vec<u8>,
    /// Frames that did not parse (counted, dropped).
    pub malformed: u64,
    /// Resets sent to segments for no connection.
    pub resets_sent: u64,
}

impl<D: Device> std::fmt::Debug for TcpHost<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpHost")
            .field("conns", &self.conns.len())
            .field("malformed", &self.malformed)
            .finish_non_exhaustive()
    }
}

impl<D: Device> TcpHost<D> {
    /// A host whose frames leave from `local_mac`.
    pub fn new(device: D, local_mac: [u8; 6]) -> Self {
        TcpHost {
            device,
            local_mac: EthernetAddress(local_mac),
            macs: HashMap::new(),
            listener: None,
            conns: HashMap::new(),
            epoch: std::time::Instant::now(),
            scratch: vec![0u8; 65536],
            malformed: 0,
            resets_sent: 0,
        }
    }

    /// Engine time: microseconds since this host started.
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    /// Accepts connections to `local` with `listener`.
    pub fn listen(&mut self, local: SocketAddrV4, listener: Listener) {
        self.listener = Some((local, listener));
    }

    /// Tells the host the MAC of a next hop (for active opens).
    pub fn add_neighbour(&mut self, addr: Ipv4Addr, mac: [u8; 6]) {
        self.macs.insert(addr, EthernetAddress(mac));
    }

    /// Adds a connection (active open or import); its first segments go out
    /// on the next [`poll`](Self::poll).
    pub fn insert(&mut self, conn: Connection) {
        self.conns.insert(conn.tuple(), conn);
    }

    /// The device, for its counters.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// One round: receive a batch, run timers, transmit everything due.
    pub fn poll(&mut self) -> Result<(), DeviceError> {
        let mut frames: Vec<Vec<u8>> = Vec::new();
        self.device.receive(128, &mut |f| frames.push(f.to_vec()))?;
        let now = self.now();
        for frame in &frames {
            let Ok(parsed) = TcpFrame::parse(frame) else {
                self.malformed += 1;
                continue;
            };
            self.macs.insert(parsed.ip.src_addr, parsed.eth.src_addr);
            let tuple = FourTuple::incoming(parsed.ip.src_addr, parsed.ip.dst_addr, &parsed.tcp);
            if let Some(conn) = self.conns.get_mut(&tuple) {
                conn.handle_segment(now, &parsed.tcp);
            } else if let Some((_, listener)) = self
                .listener
                .as_mut()
                .filter(|(local, _)| *local == tuple.local)
            {
                listener.handle_segment(now, tuple, &parsed.tcp);
            } else if let Some(rst) = relay_tcp::reset_reply(&parsed.tcp) {
                self.resets_sent += 1;
                send_segment(&mut self.device, self.local_mac, &self.macs, tuple, &rst)?;
            }
        }
        if let Some((_, listener)) = self.listener.as_mut() {
            while let Some((tuple, conn)) = listener.accept() {
                self.conns.insert(tuple, conn);
            }
            if listener.poll_timeout().is_some_and(|t| t <= now) {
                listener.handle_timeout(now);
            }
            while let Some((tuple, seg)) = listener.poll_transmit(now, &mut self.scratch) {
                send_segment(&mut self.device, self.local_mac, &self.macs, tuple, &seg)?;
            }
        }
        for conn in self.conns.values_mut() {
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.handle_timeout(now);
            }
        }
        self.transmit()?;
        Ok(())
    }

    /// Sends every segment the connections have ready.
    pub fn transmit(&mut self) -> Result<(), DeviceError> {
        let now = self.now();
        for (tuple, conn) in self.conns.iter_mut() {
            while let Some(seg) = conn.poll_transmit(now, &mut self.scratch) {
                send_segment(&mut self.device, self.local_mac, &self.macs, *tuple, &seg)?;
            }
        }
        self.device.flush()
    }

    /// Waits for a frame or the next engine timer, at most `max`.
    pub fn wait(&mut self, max: Duration) -> Result<(), DeviceError> {
        let now = self.now();
        let next = self
            .conns
            .values()
            .filter_map(|c| c.poll_timeout())
            .chain(self.listener.as_ref().and_then(|(_, l)| l.poll_timeout()))
            .min();
        let wait = match next {
            Some(t) if t <= now => return Ok(()),
            Some(t) => t.saturating_duration_since(now).min(max),
            None => max,
        };
        self.device.wait_readable(wait).map(|_| ())
    }
}

fn send_segment<D: Device>(
    device: &mut D,
    local_mac: EthernetAddress,
    macs: &HashMap<Ipv4Addr, EthernetAddress>,
    tuple: FourTuple,
    seg: &TcpRepr<'_>,
) -> Result<(), DeviceError> {
    let (src, dst) = (*tuple.local.ip(), *tuple.remote.ip());
    let Some(dst_mac) = macs.get(&dst).copied() else {
        // No MAC yet: the engine retransmits; tests resolve neighbours first.
        return Ok(());
    };
    let frame = TcpFrame {
        eth: EthernetRepr {
            src_addr: local_mac,
            dst_addr: dst_mac,
            ethertype: EtherType::Ipv4,
        },
        ip: Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: IpProtocol::Tcp,
            payload_len: 0,
            hop_limit: 64,
            ident: 0,
            dont_fragment: true,
        },
        tcp: *seg,
    };
    loop {
        let sent = device.transmit(&mut |buf| frame.emit(buf).unwrap_or(0))?;
        if sent {
            return Ok(());
        }
        device.flush()?;
    }
}
