//! An AF_PACKET device: the portable fallback for hosts without XDP.
//!
//! A packet socket sees a copy of every frame; the kernel stack still sees
//! the original. On such a host the VIP must therefore not be a local address
//! of the relay (the kernel then discards the frames instead of answering
//! them with resets), which is the operator's part of the bargain.

use std::time::Duration;

use crate::{Device, DeviceError, DeviceStats, interface_index, poll_fd};

/// Largest frame read or written: MTU 9000 plus the Ethernet header.
const AF_PACKET_MAX_FRAME: usize = 9018;

/// A raw packet socket bound to one interface.
#[derive(Debug)]
pub struct AfPacketDevice {
    fd: i32,
    ifindex: u32,
    interface: String,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    stats: DeviceStats,
}

fn eth_p_all() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

impl AfPacketDevice {
    /// Opens a packet socket on `interface` (in the calling thread's
    /// namespace), receiving every frame except the ones it sends itself.
    pub fn open(interface: &str) -> Result<AfPacketDevice, DeviceError> {
        let ifindex = interface_index(interface)?;
        // SAFETY: plain socket creation, no pointers involved.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(eth_p_all()),
            )
        };
        if fd < 0 {
            return Err(DeviceError::last_os(format!(
                "AF_PACKET socket for {interface}"
            )));
        }
        let device = AfPacketDevice {
            fd,
            ifindex,
            interface: interface.to_string(),
            rx_buf: vec![0; AF_PACKET_MAX_FRAME],
            tx_buf: vec![0; AF_PACKET_MAX_FRAME],
            stats: DeviceStats::default(),
        };
        let one: libc::c_int = 1;
        // SAFETY: `one` is a valid c_int for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(DeviceError::last_os("setsockopt PACKET_IGNORE_OUTGOING"));
        }
        let addr = device.sockaddr();
        // SAFETY: `addr` is a fully initialised sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(DeviceError::last_os(format!(
                "AF_PACKET bind to {interface}"
            )));
        }
        Ok(device)
    }

    fn sockaddr(&self) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = eth_p_all();
        addr.sll_ifindex = self.ifindex as i32;
        addr
    }

    /// The interface this socket is bound to.
    pub fn interface(&self) -> &str {
        &self.interface
    }
}

impl Drop for AfPacketDevice {
    fn drop(&mut self) {
        // SAFETY: `fd` is owned by this device and closed exactly once.
        unsafe { libc::close(self.fd) };
    }
}

impl Device for AfPacketDevice {
    fn receive(
        &mut self,
        budget: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, DeviceError> {
        let mut delivered = 0;
        while delivered < budget {
            // SAFETY: `rx_buf` is valid for writes of its full length.
            let n = unsafe {
                libc::recv(
                    self.fd,
                    self.rx_buf.as_mut_ptr().cast(),
                    self.rx_buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::WouldBlock => break,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => {
                        return Err(DeviceError::Syscall {
                            call: format!("recv on {}", self.interface),
                            source: err,
                        });
                    }
                }
            }
            let n = n as usize;
            if n > self.rx_buf.len() {
                // Larger than any frame we handle: count it as dropped.
                self.stats.rx_dropped += 1;
                continue;
            }
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += n as u64;
            sink(&self.rx_buf[..n]);
            delivered += 1;
        }
        Ok(delivered)
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<bool, DeviceError> {
        let len = build(&mut self.tx_buf).min(self.tx_buf.len());
        if len == 0 {
            return Ok(true);
        }
        let addr = self.sockaddr();
        // SAFETY: `tx_buf[..len]` is initialised; `addr` is a valid sockaddr_ll.
        let n = unsafe {
            libc::sendto(
                self.fd,
                self.tx_buf.as_ptr().cast(),
                len,
                libc::MSG_DONTWAIT,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                self.stats.tx_backpressure += 1;
                return Ok(false);
            }
            return Err(DeviceError::Syscall {
                call: format!("sendto on {}", self.interface),
                source: err,
            });
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        // Every transmit is already a syscall; nothing is held back.
        Ok(())
    }

    fn wait_readable(&mut self, timeout: Duration) -> Result<bool, DeviceError> {
        poll_fd(self.fd, libc::POLLIN, timeout)
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }

    fn max_frame_len(&self) -> usize {
        AF_PACKET_MAX_FRAME
    }
}
