use core::fmt;

/// The protocol layer an error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet II header.
    Ethernet,
    /// ARP packet.
    Arp,
    /// IPv4 header.
    Ipv4,
    /// TCP header or options.
    Tcp,
}

impl Layer {
    /// A short lowercase name, usable as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Layer::Ethernet => "ethernet",
            Layer::Arp => "arp",
            Layer::Ipv4 => "ipv4",
            Layer::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a packet could not be parsed or emitted.
///
/// Parse errors are caused by the sender of the packet (client, backend or
/// a host on the segment): the datapath counts them (see [`WireError::kind`]
/// and [`WireError::layer`] for labels) and drops the packet. The emit errors
/// ([`WireError::BufferTooSmall`], [`WireError::TooLong`]) are internal: the
/// caller built something that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Peer: the packet ends before the header, or before a length it declares.
    #[error("{layer}: truncated packet: need {needed} bytes, got {got}")]
    Truncated {
        /// Layer whose header or declared length is cut.
        layer: Layer,
        /// Bytes the layer needs.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// Peer: a field holds a value the protocol forbids (bad version, header
    /// length below the minimum, option length 0 or 1...).
    #[error("{layer}: malformed packet: {reason}")]
    Malformed {
        /// Layer with the bad field.
        layer: Layer,
        /// What is wrong, a fixed string fit for a log line.
        reason: &'static str,
    },
    /// Peer (or corruption on the path): the checksum does not match.
    #[error("{layer}: bad checksum")]
    BadChecksum {
        /// Layer whose checksum failed.
        layer: Layer,
    },
    /// Peer: an IPv4 fragment (MF set or non-zero offset); the relay does not
    /// reassemble fragments.
    #[error("ipv4: fragment, not reassembled")]
    Fragment,
    /// Peer: a valid packet of a kind this crate does not handle (another
    /// EtherType, another IP protocol, ARP for non-Ethernet/IPv4).
    #[error("{layer}: unsupported: {reason}")]
    Unsupported {
        /// Layer that carries the unsupported value.
        layer: Layer,
        /// What is unsupported, a fixed string fit for a log line.
        reason: &'static str,
    },
    /// Internal: the output buffer given to an emit function is too short.
    #[error("output buffer too small: need {needed} bytes, got {got}")]
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the buffer has.
        got: usize,
    },
    /// Internal: the packet to emit does not fit the layer's length field
    /// (an IPv4 datagram over 65535 bytes).
    #[error("{layer}: packet too long to emit: {len} bytes")]
    TooLong {
        /// Layer whose length field overflows.
        layer: Layer,
        /// The length that does not fit.
        len: usize,
    },
}

impl WireError {
    /// The layer the error belongs to.
    pub const fn layer(&self) -> Option<Layer> {
        match self {
            WireError::Truncated { layer, .. }
            | WireError::Malformed { layer, .. }
            | WireError::BadChecksum { layer }
            | WireError::Unsupported { layer, .. }
            | WireError::TooLong { layer, .. } => Some(*layer),
            WireError::Fragment => Some(Layer::Ipv4),
            WireError::BufferTooSmall { .. } => None,
        }
    }

    /// A short fixed name of the variant, usable as a drop-counter label.
    pub const fn kind(&self) -> &'static str {
        match self {
            WireError::Truncated { .. } => "truncated",
            WireError::Malformed { .. } => "malformed",
            WireError::BadChecksum { .. } => "bad_checksum",
            WireError::Fragment => "fragment",
            WireError::Unsupported { .. } => "unsupported",
            WireError::BufferTooSmall { .. } => "buffer_too_small",
            WireError::TooLong { .. } => "too_long",
        }
    }

    pub(crate) const fn truncated(layer: Layer, needed: usize, got: usize) -> Self {
        WireError::Truncated { layer, needed, got }
    }

    pub(crate) const fn malformed(layer: Layer, reason: &'static str) -> Self {
        WireError::Malformed { layer, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_a_log_line() {
        let e = WireError::truncated(Layer::Tcp, 20, 7);
        assert_eq!(e.to_string(), "tcp: truncated packet: need 20 bytes, got 7");
        assert_eq!(e.kind(), "truncated");
        assert_eq!(e.layer(), Some(Layer::Tcp));
        assert_eq!(
            WireError::Fragment.to_string(),
            "ipv4: fragment, not reassembled"
        );
        assert_eq!(WireError::Fragment.layer(), Some(Layer::Ipv4));
        let e = WireError::malformed(Layer::Ipv4, "version is not 4");
        assert_eq!(e.to_string(), "ipv4: malformed packet: version is not 4");
        assert_eq!(
            WireError::BadChecksum { layer: Layer::Arp }.to_string(),
            "arp: bad checksum"
        );
        assert_eq!(Layer::Ethernet.to_string(), "ethernet");
        let e = WireError::BufferTooSmall {
            needed: 54,
            got: 10,
        };
        assert_eq!(e.layer(), None);
        assert_eq!(e.kind(), "buffer_too_small");
    }
}
