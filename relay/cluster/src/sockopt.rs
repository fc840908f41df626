//! The one socket option the backplane needs that neither std nor tokio
//! offers.

use std::os::fd::AsRawFd;
use std::time::Duration;

/// `TCP_RTO_MAX_MS` (Linux 6.15, `include/uapi/linux/tcp.h`): the ceiling of
/// the retransmission timeout's exponential backoff, 1 to 120 s.
const TCP_RTO_MAX_MS: libc::c_int = 44;

/// The least ceiling the kernel accepts.
pub(crate) const RTO_CEILING_MIN: Duration = Duration::from_secs(1);

/// Caps how far the kernel backs off retransmissions on `socket`.
///
/// By default a TCP sender doubles its retransmission timeout up to 120 s,
/// so a few losses in a row of the same segment (likely on a lossy link
/// carrying a stream) silence the connection for seconds, and with it every
/// flow waiting for its commits to be acknowledged. On a dedicated link
/// between two relays, retrying every second at worst is the better trade.
/// Fails with `ENOPROTOOPT` on kernels older than 6.15.
pub(crate) fn cap_retransmission_backoff(
    socket: &impl AsRawFd,
    ceiling: Duration,
) -> std::io::Result<()> {
    let ms = ceiling.max(RTO_CEILING_MIN).as_millis().min(120_000) as libc::c_int;
    // SAFETY: the descriptor is an open socket borrowed from `socket` for
    // the duration of the call; `optval` points at a live `c_int` and
    // `optlen` is its size, which is what TCP_RTO_MAX_MS reads.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_RTO_MAX_MS,
            (&raw const ms).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_is_set_on_a_tcp_socket_or_refused_by_an_old_kernel() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        match cap_retransmission_backoff(&listener, Duration::from_millis(300)) {
            // Below the kernel's least, so the least.
            Ok(()) => assert_eq!(read_ceiling_ms(&listener), 1000),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT), "{e}"),
        }
        if cap_retransmission_backoff(&listener, Duration::from_millis(2500)).is_ok() {
            assert_eq!(read_ceiling_ms(&listener), 2500);
        }
    }

    fn read_ceiling_ms(socket: &impl AsRawFd) -> libc::c_int {
        let mut ms: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an open socket; `optval` and `optlen` point at live locals
        // of the sizes the kernel writes.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                TCP_RTO_MAX_MS,
                (&raw mut ms).cast::<libc::c_void>(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        ms
    }

    #[test]
    fn a_descriptor_that_is_not_a_socket_is_an_error() {
        let file = std::fs::File::open("/proc/self/stat").expect("open");
        assert!(cap_retransmission_backoff(&file, Duration::from_secs(1)).is_err());
    }
}
