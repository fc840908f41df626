//! The lab's addresses. They exist only inside the lab's namespaces.
//!
//! | subnet          | what                                   |
//! |-----------------|----------------------------------------|
//! | 10.200.1.0/24   | front: client, relays, the VIP         |
//! | 10.200.2.0/24   | back: relays, backend, the shared back-side address |
//! | 10.200.3.0/30   | backplane between relay-a and relay-b  |

use std::net::Ipv4Addr;

/// The client's address (front).
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 10);
/// relay-a's own front address (management, ARP).
pub const RELAY_A_FRONT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
/// relay-b's own front address.
pub const RELAY_B_FRONT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 3);
/// The service VIP clients connect to (port [`VIP_PORT`]).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 100);
/// The service port on the VIP.
pub const VIP_PORT: u16 = 443;
/// relay-a's own back address.
pub const RELAY_A_BACK: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);
/// relay-b's own back address.
pub const RELAY_B_BACK: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 3);
/// The back-side address relayed connections leave from (moves on failover).
pub const BACK_SHARED: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 100);
/// First local port of relayed back-side connections.
pub const BACK_PORT_FIRST: u16 = 40000;
/// Last local port of relayed back-side connections.
pub const BACK_PORT_LAST: u16 = 49999;
/// The backend server.
pub const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 10);
/// relay-a's backplane address.
pub const BACKPLANE_A: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 1);
/// relay-b's backplane address.
pub const BACKPLANE_B: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 2);
