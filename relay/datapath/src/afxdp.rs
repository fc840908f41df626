//! An AF_XDP device: one socket on one rx queue of one interface.
//!
//! The UMEM is split in two pools: receive frames cycle between the fill ring,
//! the rx ring and the worker; transmit frames cycle between a free list, the
//! tx ring and the completion ring. The worker never waits on the kernel in
//! `receive`/`transmit`; `flush` issues at most one wakeup per batch, and only
//! when descriptors were queued (kicking idle rings costs receive rate).

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::time::Duration;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

use crate::{Device, DeviceError, DeviceStats, poll_fd};

/// How long [`AfXdpDevice::open`] waits for a queue that a closing socket still holds.
pub const BUSY_RETRY: Duration = Duration::from_secs(3);

/// Settings of one AF_XDP socket.
#[derive(Clone, Debug)]
pub struct AfXdpConfig {
    /// Interface to bind, in the calling thread's network namespace.
    pub interface: String,
    /// Rx queue of that interface (one socket per queue).
    pub queue: u32,
    /// UMEM frames in all; half receive, half transmit. Power of two.
    pub frame_count: u32,
    /// Bytes per UMEM frame (2048 or 4096).
    pub frame_size: u32,
    /// Entries in each of the four rings. Power of two, at most frame_count / 2.
    pub ring_size: u32,
    /// Force copy mode (veth only supports copy mode).
    pub force_copy: bool,
}

impl AfXdpConfig {
    /// Defaults that suit a veth: 4096 frames of 4 KiB, 2048-entry rings, copy mode.
    pub fn new(interface: impl Into<String>, queue: u32) -> Self {
        AfXdpConfig {
            interface: interface.into(),
            queue,
            frame_count: 4096,
            frame_size: 4096,
            ring_size: 2048,
            force_copy: true,
        }
    }

    fn validate(&self) -> Result<(), DeviceError> {
        let pow2 = |v: u32| v != 0 && v.is_power_of_two();
        if !pow2(self.frame_count) || !pow2(self.ring_size) {
            return Err(DeviceError::Config(format!(
                "frame_count ({}) and ring_size ({}) must be powers of two",
                self.frame_count, self.ring_size
            )));
        }
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return Err(DeviceError::Config(format!(
                "frame_size must be 2048 or 4096, not {}",
                self.frame_size
            )));
        }
        if self.ring_size > self.frame_count / 2 {
            return Err(DeviceError::Config(format!(
                "ring_size ({}) must be at most half of frame_count ({})",
                self.ring_size, self.frame_count
            )));
        }
        Ok(())
    }
}

/// Anonymous memory registered as UMEM; unmapped on drop, after the sockets.
struct UmemArea {
    ptr: NonNull<u8>,
    len: usize,
}

impl UmemArea {
    fn new(len: usize) -> Result<Self, DeviceError> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DeviceError::last_os(format!("mmap of {len} bytes of UMEM")));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| DeviceError::Config("mmap returned NULL".into()))?;
        Ok(UmemArea { ptr, len })
    }

    fn as_slice_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`; the device drops
        // its sockets (and with them the kernel's UMEM registration) first.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One AF_XDP socket with its UMEM and rings.
pub struct AfXdpDevice {
    // Field order is drop order: rings and sockets before the UMEM memory.
    rx: RingRx,
    tx: RingTx,
    fill_completion: DeviceQueue,
    user: User,
    _umem: Umem,
    area: UmemArea,
    frame_size: u32,
    tx_free: Vec<u64>,
    rx_recycle: Vec<u64>,
    /// Descriptors of the batch being delivered (kept to avoid a per-batch allocation).
    rx_batch: Vec<XdpDesc>,
    tx_queued_since_kick: u32,
    stats: DeviceStats,
    interface: String,
    queue: u32,
}

impl std::fmt::Debug for AfXdpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpDevice")
            .field("interface", &self.interface)
            .field("queue", &self.queue)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn xsk_err(what: &str, config: &AfXdpConfig, errno: xdpilone::Errno) -> DeviceError {
    DeviceError::errno(
        format!(
            "AF_XDP {what} on {} queue {}",
            config.interface, config.queue
        ),
        errno.get_raw(),
    )
}

impl AfXdpDevice {
    /// Creates the socket, registers the UMEM, fills the fill ring and binds
    /// to the interface queue. Register the socket with the steer program
    /// ([`crate::SteerProgram::register_socket`]) to start receiving.
    ///
    /// The kernel releases a closed socket's queue asynchronously, so a bind
    /// that finds the queue busy is retried for up to [`BUSY_RETRY`].
    pub fn open(config: &AfXdpConfig) -> Result<AfXdpDevice, DeviceError> {
        let deadline = std::time::Instant::now() + BUSY_RETRY;
        loop {
            match Self::open_once(config) {
                Err(DeviceError::Syscall { call, source })
                    if source.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(%call, "queue still held by a closing socket; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(config: &AfXdpConfig) -> Result<AfXdpDevice, DeviceError> {
        config.validate()?;
        crate::interface_index(&config.interface)?;
        let area = UmemArea::new(config.frame_count as usize * config.frame_size as usize)?;
        let umem_config = UmemConfig {
            fill_size: config.ring_size,
            complete_size: config.ring_size,
            frame_size: config.frame_size,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is page-aligned, writable, `frame_count * frame_size`
        // bytes long, and outlives the Umem (it is dropped after it, see the
        // field order of AfXdpDevice).
        let umem = unsafe { Umem::new(umem_config, area.as_slice_ptr()) }
            .map_err(|e| xsk_err("UMEM registration", config, e))?;

        let mut info = IfInfo::invalid();
        let ifname = CString::new(config.interface.as_str())
            .map_err(|_| DeviceError::Config("interface name contains NUL".into()))?;
        info.from_name(&ifname)
            .map_err(|e| xsk_err("interface lookup", config, e))?;
        info.set_queue(config.queue);

        let socket = Socket::with_shared(&info, &umem).map_err(|e| xsk_err("socket", config, e))?;
        let mut fill_completion = umem
            .fq_cq(&socket)
            .map_err(|e| xsk_err("fill/completion rings", config, e))?;
        let mut bind_flags = SocketConfig::XDP_BIND_NEED_WAKEUP;
        if config.force_copy {
            bind_flags |= SocketConfig::XDP_BIND_COPY;
        }
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: NonZeroU32::new(config.ring_size),
                    tx_size: NonZeroU32::new(config.ring_size),
                    bind_flags,
                },
            )
            .map_err(|e| xsk_err("rx/tx rings", config, e))?;
        let rx = user
            .map_rx()
            .map_err(|e| xsk_err("rx ring mmap", config, e))?;
        let tx = user
            .map_tx()
            .map_err(|e| xsk_err("tx ring mmap", config, e))?;

        let half = config.frame_count / 2;
        let frame = u64::from(config.frame_size);
        let rx_frames: Vec<u64> = (0..half).map(|i| u64::from(i) * frame).collect();
        let tx_free: Vec<u64> = (half..config.frame_count)
            .map(|i| u64::from(i) * frame)
            .collect();
        {
            let mut writer = fill_completion.fill(config.ring_size);
            let filled = writer.insert(rx_frames.iter().copied());
            writer.commit();
            if filled == 0 {
                return Err(DeviceError::Config("could not post receive buffers".into()));
            }
        }
        // Frames beyond the fill ring's size wait in the recycle list.
        let rx_recycle = rx_frames[config.ring_size as usize..].to_vec();

        umem.bind(&user).map_err(|e| xsk_err("bind", config, e))?;
        tracing::info!(interface = %config.interface, queue = config.queue, frames = config.frame_count, "AF_XDP socket bound");

        Ok(AfXdpDevice {
            rx,
            tx,
            fill_completion,
            user,
            _umem: umem,
            area,
            frame_size: config.frame_size,
            tx_free,
            rx_recycle,
            rx_batch: Vec::with_capacity(config.ring_size as usize),
            tx_queued_since_kick: 0,
            stats: DeviceStats::default(),
            interface: config.interface.clone(),
            queue: config.queue,
        })
    }

    /// The socket's descriptor, for [`crate::SteerProgram::register_socket`].
    pub fn socket_fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    /// The rx queue this socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    fn frame_ptr(&self, addr: u64, len: u32) -> Result<*mut u8, DeviceError> {
        let end = addr.checked_add(u64::from(len));
        match end {
            Some(end) if end <= self.area.len as u64 => {
                // SAFETY: `addr + len` is within the mapped area (checked above).
                Ok(unsafe { self.area.ptr.as_ptr().add(addr as usize) })
            }
            _ => Err(DeviceError::BadDescriptor { addr, len }),
        }
    }

    fn refill(&mut self) {
        if self.rx_recycle.is_empty() {
            return;
        }
        let want = self.rx_recycle.len() as u32;
        let posted = {
            let mut writer = self.fill_completion.fill(want);
            let posted = writer.insert(self.rx_recycle.iter().copied()) as usize;
            writer.commit();
            posted
        };
        self.rx_recycle.drain(..posted);
        if posted > 0 && self.fill_completion.needs_wakeup() {
            self.fill_completion.wake();
            self.stats.kicks += 1;
        }
    }

    fn reclaim_completions(&mut self) {
        let frame_mask = !(u64::from(self.frame_size) - 1);
        let mut reader = self.fill_completion.complete(u32::MAX);
        while let Some(addr) = reader.read() {
            self.tx_free.push(addr & frame_mask);
        }
        reader.release();
    }

    /// Kernel socket statistics (drops, invalid descriptors, ring-full events).
    pub fn kernel_stats(&self) -> Result<xdpilone::xdp::XdpStatisticsV2, DeviceError> {
        self.user
            .statistics_v2()
            .map_err(|e| DeviceError::errno("XDP_STATISTICS", e.get_raw()))
    }
}

impl Device for AfXdpDevice {
    fn receive(
        &mut self,
        budget: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, DeviceError> {
        let frame_mask = !(u64::from(self.frame_size) - 1);
        let budget = budget.min(u32::MAX as usize) as u32;
        let mut descs = std::mem::take(&mut self.rx_batch);
        descs.clear();
        {
            let mut reader = self.rx.receive(budget);
            while let Some(desc) = reader.read() {
                descs.push(desc);
            }
            reader.release();
        }
        let mut delivered = 0;
        let mut bad = None;
        for desc in &descs {
            match self.frame_ptr(desc.addr, desc.len) {
                Ok(ptr) => {
                    // SAFETY: the kernel handed this frame over through the rx
                    // ring and will not write to it until it is posted to the
                    // fill ring again, which happens after `sink` returns.
                    let frame = unsafe { std::slice::from_raw_parts(ptr, desc.len as usize) };
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += u64::from(desc.len);
                    sink(frame);
                    delivered += 1;
                }
                Err(e) => bad = Some(e),
            }
            self.rx_recycle.push(desc.addr & frame_mask);
        }
        self.rx_batch = descs;
        self.refill();
        match bad {
            Some(e) => Err(e),
            None => Ok(delivered),
        }
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<bool, DeviceError> {
        if self.tx_free.is_empty() {
            self.reclaim_completions();
        }
        let Some(addr) = self.tx_free.pop() else {
            self.stats.tx_backpressure += 1;
            return Ok(false);
        };
        let ptr = self.frame_ptr(addr, self.frame_size)?;
        // SAFETY: the frame is on our free list: not in any ring, so the
        // kernel does not read or write it until we post it on the tx ring.
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr, self.frame_size as usize) };
        let len = build(buf).min(self.frame_size as usize);
        if len == 0 {
            self.tx_free.push(addr);
            return Ok(true);
        }
        let queued = {
            let mut writer = self.tx.transmit(1);
            let queued = writer.insert_once(XdpDesc {
                addr,
                len: len as u32,
                options: 0,
            });
            writer.commit();
            queued
        };
        if !queued {
            self.tx_free.push(addr);
            self.stats.tx_backpressure += 1;
            return Ok(false);
        }
        self.tx_queued_since_kick += 1;
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        if self.tx_queued_since_kick > 0 {
            // Copy mode sends a bounded batch per syscall; keep kicking while
            // the kernel makes progress so a large batch does not sit queued.
            let mut rounds = 0;
            loop {
                let before = self.tx.pending();
                if before == 0 || !self.tx.needs_wakeup() {
                    break;
                }
                self.tx.wake();
                self.stats.kicks += 1;
                rounds += 1;
                self.reclaim_completions();
                if self.tx.pending() >= before || rounds >= 64 {
                    break;
                }
            }
            self.tx_queued_since_kick = 0;
        }
        self.reclaim_completions();
        Ok(())
    }

    fn wait_readable(&mut self, timeout: Duration) -> Result<bool, DeviceError> {
        if self.rx.available() > 0 {
            return Ok(true);
        }
        poll_fd(self.user.as_raw_fd(), libc::POLLIN, timeout)
    }

    fn stats(&self) -> DeviceStats {
        let mut stats = self.stats;
        // One getsockopt: cheap enough for a scrape, kept off the packet path.
        if let Ok(k) = self.kernel_stats() {
            stats.rx_dropped = k.rx_dropped + k.rx_ring_full;
            stats.invalid_descs = k.rx_invalid_descs + k.tx_invalid_descs;
        }
        stats
    }

    fn max_frame_len(&self) -> usize {
        self.frame_size as usize
    }
}
