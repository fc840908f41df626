//! rtnetlink requests the relay makes of its own box: XDP attachment (the
//! way `ip link set dev X xdp` does it) and the addresses a relay takes over
//! (`ip addr add`).
//!
//! An attachment made this way belongs to the interface, not to a file
//! descriptor of the process: it stays when the relay process dies, however
//! it dies (aya's bpf_link attachment goes with the last descriptor). That is
//! what lets the steer program keep a dead relay's box from answering its
//! flows with resets. Attaching again replaces the program atomically, so a
//! restarted relay takes over without a moment in which the kernel sees the
//! traffic.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::DeviceError;
use crate::steer::AttachMode;

/// `IFLA_XDP` (include/uapi/linux/if_link.h) and its nested attributes.
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;
/// `XDP_FLAGS_SKB_MODE`, `XDP_FLAGS_DRV_MODE`.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

fn mode_flags(mode: AttachMode) -> u32 {
    match mode {
        AttachMode::Driver => XDP_FLAGS_DRV_MODE,
        AttachMode::Skb => XDP_FLAGS_SKB_MODE,
    }
}

fn syscall_err(call: String) -> DeviceError {
    DeviceError::Syscall {
        call,
        source: std::io::Error::last_os_error(),
    }
}

/// The index of `ifname` in the calling thread's network namespace.
pub fn if_index(ifname: &str) -> Result<u32, DeviceError> {
    let name =
        CString::new(ifname).map_err(|_| DeviceError::NoSuchInterface(ifname.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string for the whole call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DeviceError::NoSuchInterface(ifname.to_string()));
    }
    Ok(index)
}

/// Attaches `program` to `ifname` in `mode`, replacing any program attached
/// the same way before (a previous relay's, dead or alive).
pub fn attach(ifname: &str, program: BorrowedFd<'_>, mode: AttachMode) -> Result<(), DeviceError> {
    let index = if_index(ifname)?;
    set_xdp(index, program.as_raw_fd(), mode_flags(mode))
        .map_err(|e| annotate(e, &format!("attaching XDP to {ifname} ({mode:?} mode)")))
}

/// Detaches whatever program is attached to `ifname` in `mode`.
pub fn detach(ifname: &str, mode: AttachMode) -> Result<(), DeviceError> {
    let index = if_index(ifname)?;
    set_xdp(index, -1, mode_flags(mode))
        .map_err(|e| annotate(e, &format!("detaching XDP from {ifname}")))
}

fn annotate(e: DeviceError, what: &str) -> DeviceError {
    match e {
        DeviceError::Syscall { call, source } => DeviceError::Syscall {
            call: format!("{what}: {call}"),
            source,
        },
        other => other,
    }
}

/// A netlink header for a request of `msg_type` and `total` bytes that asks
/// for an acknowledgement (`extra_flags` adds e.g. NLM_F_CREATE).
fn header(m: &mut Vec<u8>, total: usize, msg_type: u16, extra_flags: u16) {
    // nlmsghdr: length, type, flags, sequence, port id.
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(
        &((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16 | extra_flags).to_ne_bytes(),
    );
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
}

fn attr(m: &mut Vec<u8>, kind: u16, value: &[u8]) {
    m.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(value);
}

/// The RTM_SETLINK request: ifinfomsg for `index`, then IFLA_XDP with the
/// program descriptor (-1 detaches) and the mode flags.
fn request(index: u32, fd: i32, flags: u32) -> Vec<u8> {
    let nested_len = 4 + 8 + 8;
    let total = NLMSG_HDR_LEN + IFINFOMSG_LEN + nested_len;
    let mut m = Vec::with_capacity(total);
    header(&mut m, total, libc::RTM_SETLINK, 0);
    // ifinfomsg: family, pad, type, index, flags, change.
    m.push(libc::AF_UNSPEC as u8);
    m.push(0);
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&(index as i32).to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // IFLA_XDP { IFLA_XDP_FD, IFLA_XDP_FLAGS }.
    m.extend_from_slice(&(nested_len as u16).to_ne_bytes());
    m.extend_from_slice(&(IFLA_XDP | NLA_F_NESTED).to_ne_bytes());
    attr(&mut m, IFLA_XDP_FD, &fd.to_ne_bytes());
    attr(&mut m, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    m
}

/// The RTM_NEWADDR (or, with `remove`, RTM_DELADDR) request for
/// `addr/32` on interface `index`.
fn addr_request(index: u32, addr: Ipv4Addr, remove: bool) -> Vec<u8> {
    const IFADDRMSG_LEN: usize = 8;
    let total = NLMSG_HDR_LEN + IFADDRMSG_LEN + 8 + 8;
    let mut m = Vec::with_capacity(total);
    if remove {
        header(&mut m, total, libc::RTM_DELADDR, 0);
    } else {
        header(
            &mut m,
            total,
            libc::RTM_NEWADDR,
            (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16,
        );
    }
    // ifaddrmsg: family, prefix length, flags, scope (universe), index.
    m.push(libc::AF_INET as u8);
    m.push(32);
    m.push(0);
    m.push(libc::RT_SCOPE_UNIVERSE);
    m.extend_from_slice(&index.to_ne_bytes());
    attr(&mut m, libc::IFA_LOCAL, &addr.octets());
    attr(&mut m, libc::IFA_ADDRESS, &addr.octets());
    m
}

/// Puts `addr/32` on `ifname` (already there is fine): the box's kernel
/// then answers ARP for it, within what the steer program allows.
pub fn add_address(ifname: &str, addr: Ipv4Addr) -> Result<(), DeviceError> {
    let index = if_index(ifname)?;
    rtnl(&addr_request(index, addr, false))
        .map_err(|e| annotate(e, &format!("adding {addr}/32 to {ifname}")))
}

/// Takes `addr/32` off `ifname` (not there is fine): the box's kernel
/// stops answering for it (a relay that handed its addresses over).
pub fn remove_address(ifname: &str, addr: Ipv4Addr) -> Result<(), DeviceError> {
    let index = if_index(ifname)?;
    match rtnl(&addr_request(index, addr, true)) {
        Err(DeviceError::Syscall { source, .. })
            if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
        {
            Ok(())
        }
        r => r.map_err(|e| annotate(e, &format!("removing {addr}/32 from {ifname}"))),
    }
}

/// The kernel's answer to our request: `Ok` for an acknowledgement, the
/// errno it reported otherwise.
fn parse_ack(reply: &[u8]) -> Result<(), i32> {
    if reply.len() < NLMSG_HDR_LEN + 4 {
        return Err(libc::EPROTO);
    }
    let msg_type = u16::from_ne_bytes([reply[4], reply[5]]);
    if msg_type != libc::NLMSG_ERROR as u16 {
        return Err(libc::EPROTO);
    }
    let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if code == 0 { Ok(()) } else { Err(-code) }
}

fn set_xdp(index: u32, fd: i32, flags: u32) -> Result<(), DeviceError> {
    rtnl(&request(index, fd, flags))
}

/// Sends one request to the kernel's rtnetlink and waits for its answer.
fn rtnl(msg: &[u8]) -> Result<(), DeviceError> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(syscall_err("socket(AF_NETLINK)".into()));
    }
    // SAFETY: `raw` is a descriptor we just opened and own alone.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed sockaddr_nl is valid; port id 0 addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` and `kernel` outlive the call; the lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(syscall_err("sendto(RTM_SETLINK)".into()));
    }
    let mut reply = [0u8; 4096];
    // SAFETY: `reply` is writable for its whole length during the call.
    let got = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if got < 0 {
        return Err(syscall_err("recv(RTM_SETLINK ack)".into()));
    }
    parse_ack(&reply[..got as usize]).map_err(|errno| DeviceError::Syscall {
        call: "rtnetlink request".into(),
        source: std::io::Error::from_raw_os_error(errno),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_rtnetlink() {
        let m = request(7, 42, XDP_FLAGS_DRV_MODE);
        assert_eq!(m.len(), 52);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 52);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), libc::RTM_SETLINK);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        assert_eq!(u16::from_ne_bytes([m[34], m[35]]), IFLA_XDP | NLA_F_NESTED);
        assert_eq!(i32::from_ne_bytes(m[40..44].try_into().unwrap()), 42);
        assert_eq!(
            u32::from_ne_bytes(m[48..52].try_into().unwrap()),
            XDP_FLAGS_DRV_MODE
        );
    }

    #[test]
    fn acks_and_errors_are_told_apart() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert_eq!(parse_ack(&ack), Ok(()));
        ack[16..20].copy_from_slice(&(-libc::EBUSY).to_ne_bytes());
        assert_eq!(parse_ack(&ack), Err(libc::EBUSY));
        assert_eq!(parse_ack(&ack[..10]), Err(libc::EPROTO));
    }
}
