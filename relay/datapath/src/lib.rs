//! Frame devices for the relay, and the loader of the XDP steer program.
//!
//! A worker talks to the network through [`Device`]: batches of whole Ethernet
//! frames in, frames built in place out, one explicit [`Device::flush`] that
//! kicks the kernel only when something was queued. Three implementations:
//!
//! - [`AfXdpDevice`]: one AF_XDP socket on one rx queue, fed by the XDP steer
//!   program ([`SteerProgram`]) that this crate embeds and loads with aya.
//! - [`AfPacketDevice`]: a raw packet socket, for hosts without XDP.
//! - [`MemoryDevice`]: an in-process pair, for tests and simulations.
//!
//! This is the only crate of the relay with `unsafe` code: UMEM, ring and
//! namespace syscalls. Each block says why it is sound.

pub mod afpacket;
pub mod afxdp;
pub mod garp;
pub mod impair;
pub mod memory;
pub mod neighbour;
pub mod netlink;
pub mod netns;
pub mod steer;

use std::time::Duration;

pub use afpacket::AfPacketDevice;
pub use afxdp::{AfXdpConfig, AfXdpDevice};
pub use memory::MemoryDevice;
pub use steer::{AttachMode, SteerProgram, VerdictCounts};

/// A source and sink of Ethernet frames, driven by one worker thread.
///
/// Calling order per loop iteration: [`receive`](Device::receive) a batch,
/// [`transmit`](Device::transmit) any number of frames, then
/// [`flush`](Device::flush) once; [`wait_readable`](Device::wait_readable)
/// when there is nothing to do until a timer.
pub trait Device {
    /// Hands up to `budget` received frames to `sink`, in arrival order, and
    /// returns how many. A frame is only valid during its `sink` call.
    fn receive(&mut self, budget: usize, sink: &mut dyn FnMut(&[u8]))
    -> Result<usize, DeviceError>;

    /// Builds one frame in a transmit buffer: `build` gets a buffer of
    /// [`max_frame_len`](Device::max_frame_len) bytes and returns the frame
    /// length (0 = nothing to send). Returns `Ok(false)` without calling
    /// `build` when no transmit buffer is free: back-pressure, try after a flush.
    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<bool, DeviceError>;

    /// Hands queued frames to the kernel (one wakeup if any were queued) and
    /// reclaims completed transmit buffers.
    fn flush(&mut self) -> Result<(), DeviceError>;

    /// Blocks until a frame may be readable or `timeout` passes; returns
    /// whether the device signalled readiness.
    fn wait_readable(&mut self, timeout: Duration) -> Result<bool, DeviceError>;

    /// Counters since the device was opened.
    fn stats(&self) -> DeviceStats;

    /// The largest frame [`transmit`](Device::transmit) can build.
    fn max_frame_len(&self) -> usize;

    /// Copies `frame` into a transmit buffer; `Ok(false)` under back-pressure.
    fn send(&mut self, frame: &[u8]) -> Result<bool, DeviceError> {
        if frame.len() > self.max_frame_len() {
            return Err(DeviceError::FrameTooLong {
                len: frame.len(),
                max: self.max_frame_len(),
            });
        }
        self.transmit(&mut |buf: &mut [u8]| {
            buf[..frame.len()].copy_from_slice(frame);
            frame.len()
        })
    }
}

/// Device counters. Kernel-side counters are zero where the device has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames handed to the worker.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Transmit attempts refused for lack of a free buffer or ring slot.
    pub tx_backpressure: u64,
    /// Wakeup syscalls issued (tx kicks, fill-ring wakeups).
    pub kicks: u64,
    /// Frames the kernel dropped for lack of a receive buffer or ring slot.
    pub rx_dropped: u64,
    /// Descriptors the kernel rejected as invalid (rx and tx).
    pub invalid_descs: u64,
}

/// What went wrong in a device. All of these are local (the host or the
/// configuration), never caused by packet contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The named interface does not exist in this network namespace.
    #[error("no network interface named {0:?} in this namespace")]
    NoSuchInterface(String),
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Syscall {
        /// The call and its object, e.g. `AF_XDP bind on veth0 queue 0`.
        call: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid device configuration: {0}")]
    Config(String),
    /// A frame is larger than a transmit buffer.
    #[error("frame of {len} bytes exceeds the device's {max}-byte buffers")]
    FrameTooLong {
        /// Requested length.
        len: usize,
        /// Buffer size.
        max: usize,
    },
    /// The kernel handed back a descriptor outside the UMEM: a kernel or
    /// bookkeeping bug; the frame is skipped.
    #[error("kernel descriptor outside UMEM: addr {addr:#x} len {len}")]
    BadDescriptor {
        /// Descriptor address.
        addr: u64,
        /// Descriptor length.
        len: u32,
    },
    /// Loading, attaching or talking to the XDP steer program failed.
    #[error("XDP steer program: {0}")]
    Steer(String),
}

impl DeviceError {
    pub(crate) fn last_os(call: impl Into<String>) -> Self {
        DeviceError::Syscall {
            call: call.into(),
            source: std::io::Error::last_os_error(),
        }
    }

    pub(crate) fn errno(call: impl Into<String>, errno: i32) -> Self {
        DeviceError::Syscall {
            call: call.into(),
            source: std::io::Error::from_raw_os_error(errno.abs()),
        }
    }
}

/// Index of the interface `name` in the calling thread's network namespace.
pub fn interface_index(name: &str) -> Result<u32, DeviceError> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| DeviceError::Config(format!("interface name {name:?} contains NUL")))?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the whole call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(DeviceError::NoSuchInterface(name.to_string()));
    }
    Ok(index)
}

/// Blocks on `fd` for `events` up to `timeout`; true if it became ready.
pub(crate) fn poll_fd(fd: i32, events: i16, timeout: Duration) -> Result<bool, DeviceError> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is a valid pollfd for the duration of the call, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, millis) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(DeviceError::Syscall {
            call: "poll".into(),
            source: err,
        });
    }
    Ok(rc > 0 && pfd.revents & events != 0)
}
