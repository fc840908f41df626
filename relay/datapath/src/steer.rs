//! The XDP steer program: loading, attaching, its maps, its counters.
//!
//! The object file is built from `relay-ebpf` by this crate's build script
//! and embedded, so a relay binary carries the exact program its map types
//! were compiled against (both sides share `relay-common`).

use std::os::fd::{AsFd, AsRawFd};

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use relay_common::{
    ADDR_OWNED, ADDR_STANDBY, AddrKey, PROGRAM_NAME, ServiceKey, ServiceValue, SteerConfig,
    VERDICT_COUNT, Verdict, map_name,
};

use crate::DeviceError;

/// The steer program's object file (eBPF ELF with BTF).
pub static STEER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay-steer.bpf.o"));

// aya reads and writes map entries as plain bytes; these wrappers carry the
// promise that the shared types are such bytes.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodServiceKey(ServiceKey);
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodServiceValue(ServiceValue);
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodSteerConfig(SteerConfig);
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodAddrKey(AddrKey);

// SAFETY: #[repr(C)] structs of integers only, without padding (size
// assertions in relay-common), so every bit pattern is a valid value.
unsafe impl aya::Pod for PodServiceKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PodServiceValue {}
// SAFETY: as above.
unsafe impl aya::Pod for PodSteerConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for PodAddrKey {}

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// In the driver (veth and most NICs support it).
    #[default]
    Driver,
    /// Generic XDP in the stack: slower, works everywhere.
    Skb,
}

/// Verdict counters summed over CPUs, indexed by [`Verdict`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts(pub [u64; VERDICT_COUNT as usize]);

impl VerdictCounts {
    /// The count of one verdict.
    pub fn get(&self, verdict: Verdict) -> u64 {
        self.0[verdict.index() as usize]
    }

    /// Per-verdict increase from `earlier` to `self`.
    pub fn since(&self, earlier: &VerdictCounts) -> VerdictCounts {
        let mut out = [0u64; VERDICT_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.0[i].saturating_sub(earlier.0[i]);
        }
        VerdictCounts(out)
    }

    /// (name, count) pairs, for logs and metrics.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Verdict::ALL.iter().map(|v| (v.name(), self.get(*v)))
    }
}

/// The loaded steer program and its maps. Dropping it detaches the program
/// from the interfaces it was attached to with [`attach`](Self::attach);
/// an attachment made with [`attach_persistent`](Self::attach_persistent)
/// stays until [`detach_persistent`](Self::detach_persistent) or until
/// another program replaces it.
#[derive(Debug)]
pub struct SteerProgram {
    ebpf: Ebpf,
    attached: Vec<String>,
    persistent: Vec<(String, AttachMode)>,
}

fn steer_err(what: &str, e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Steer(format!("{what}: {e}"))
}

impl SteerProgram {
    /// Loads the program into the kernel with empty maps and workers marked
    /// dead: until [`set_config`](Self::set_config) says otherwise, steered
    /// traffic is dropped.
    pub fn load() -> Result<SteerProgram, DeviceError> {
        let mut ebpf = Ebpf::load(STEER_OBJECT).map_err(|e| steer_err("loading object", e))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| steer_err("object", format!("no program {PROGRAM_NAME}")))?
            .try_into()
            .map_err(|e| steer_err("program type", e))?;
        program
            .load()
            .map_err(|e| steer_err("verifier rejected the program", e))?;
        let mut steer = SteerProgram {
            ebpf,
            attached: Vec::new(),
            persistent: Vec::new(),
        };
        steer.set_config(SteerConfig::default())?;
        Ok(steer)
    }

    fn program(&self) -> Result<&Xdp, DeviceError> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or_else(|| steer_err("object", format!("no program {PROGRAM_NAME}")))?
            .try_into()
            .map_err(|e| steer_err("program type", e))
    }

    /// Attaches to `ifname` in the calling thread's network namespace.
    pub fn attach(&mut self, ifname: &str, mode: AttachMode) -> Result<(), DeviceError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| steer_err("object", format!("no program {PROGRAM_NAME}")))?
            .try_into()
            .map_err(|e| steer_err("program type", e))?;
        let xdp_mode = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        program
            .attach(ifname, xdp_mode)
            .map_err(|e| steer_err(&format!("attaching to {ifname} ({mode:?} mode)"), e))?;
        self.attached.push(ifname.to_string());
        tracing::info!(interface = ifname, ?mode, "XDP steer program attached");
        Ok(())
    }

    /// Attaches to `ifname` so that the attachment outlives this process
    /// (rtnetlink, see [`crate::netlink`]), replacing a program left
    /// there by an earlier relay without a gap.
    ///
    /// A relay that dies keeps its box quiet this way: its sockets leave
    /// the XSKMAP with the process, and the program then drops steered
    /// traffic and ARP requests for the relay's addresses
    /// ([`Verdict::DropNoWorker`], [`Verdict::DropArpNoWorker`]).
    pub fn attach_persistent(&mut self, ifname: &str, mode: AttachMode) -> Result<(), DeviceError> {
        let program = self.program()?;
        let fd = program.fd().map_err(|e| steer_err("program fd", e))?;
        crate::netlink::attach(ifname, fd.as_fd(), mode)?;
        self.attached.push(ifname.to_string());
        self.persistent.push((ifname.to_string(), mode));
        tracing::info!(
            interface = ifname,
            ?mode,
            "XDP steer program attached (stays if the process dies)"
        );
        Ok(())
    }

    /// Removes the attachments made with
    /// [`attach_persistent`](Self::attach_persistent).
    pub fn detach_persistent(&mut self) -> Result<(), DeviceError> {
        for (ifname, mode) in std::mem::take(&mut self.persistent) {
            crate::netlink::detach(&ifname, mode)?;
            self.attached.retain(|a| a != &ifname);
            tracing::info!(interface = ifname, "XDP steer program detached");
        }
        Ok(())
    }

    /// Interfaces the program is attached to.
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// Replaces the relay's addresses (VIPs, the back-side address), each
    /// with whether this relay serves it now (`true`) or stands by for a
    /// peer that does. ARP requests for an address are answered only while
    /// it is served here and a worker lives.
    pub fn set_addresses(
        &mut self,
        addrs: &[(std::net::Ipv4Addr, bool)],
    ) -> Result<(), DeviceError> {
        let mut map: HashMap<&mut MapData, PodAddrKey, u32> = HashMap::try_from(
            self.ebpf
                .map_mut(map_name::ADDRS)
                .ok_or_else(|| steer_err("object", "no ADDRS map"))?,
        )
        .map_err(|e| steer_err("ADDRS map", e))?;
        let wanted: Vec<(AddrKey, u32)> = addrs
            .iter()
            .map(|(a, owned)| {
                let value = if *owned { ADDR_OWNED } else { ADDR_STANDBY };
                (AddrKey::new(a.octets()), value)
            })
            .collect();
        let stale: Vec<PodAddrKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.iter().any(|(w, _)| *w == k.0))
            .collect();
        for key in stale {
            map.remove(&key)
                .map_err(|e| steer_err("removing an address", e))?;
        }
        for (key, value) in wanted {
            map.insert(PodAddrKey(key), value, 0)
                .map_err(|e| steer_err("inserting an address", e))?;
        }
        Ok(())
    }

    /// Replaces the set of front-side services with `services`.
    pub fn set_services(
        &mut self,
        services: &[(ServiceKey, ServiceValue)],
    ) -> Result<(), DeviceError> {
        let mut map: HashMap<&mut MapData, PodServiceKey, PodServiceValue> = HashMap::try_from(
            self.ebpf
                .map_mut(map_name::SERVICES)
                .ok_or_else(|| steer_err("object", "no SERVICES map"))?,
        )
        .map_err(|e| steer_err("SERVICES map", e))?;
        let stale: Vec<PodServiceKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !services.iter().any(|(s, _)| s == &k.0))
            .collect();
        for key in stale {
            map.remove(&key)
                .map_err(|e| steer_err("removing a service", e))?;
        }
        for (key, value) in services {
            map.insert(PodServiceKey(*key), PodServiceValue(*value), 0)
                .map_err(|e| steer_err("inserting a service", e))?;
        }
        Ok(())
    }

    /// Sets the back-side address, port range and the workers-alive flag.
    pub fn set_config(&mut self, config: SteerConfig) -> Result<(), DeviceError> {
        let mut map: Array<&mut MapData, PodSteerConfig> = Array::try_from(
            self.ebpf
                .map_mut(map_name::CONFIG)
                .ok_or_else(|| steer_err("object", "no CONFIG map"))?,
        )
        .map_err(|e| steer_err("CONFIG map", e))?;
        map.set(0, PodSteerConfig(config), 0)
            .map_err(|e| steer_err("writing CONFIG", e))
    }

    /// The current steering settings.
    pub fn config(&self) -> Result<SteerConfig, DeviceError> {
        let map: Array<&MapData, PodSteerConfig> = Array::try_from(
            self.ebpf
                .map(map_name::CONFIG)
                .ok_or_else(|| steer_err("object", "no CONFIG map"))?,
        )
        .map_err(|e| steer_err("CONFIG map", e))?;
        map.get(&0, 0)
            .map(|c| c.0)
            .map_err(|e| steer_err("reading CONFIG", e))
    }

    /// Marks userspace workers alive or dead (dead: steered traffic dropped).
    pub fn set_workers_alive(&mut self, alive: bool) -> Result<(), DeviceError> {
        let mut config = self.config()?;
        config.workers_alive = alive as u32;
        self.set_config(config)
    }

    /// Routes packets of rx queue `queue` to the AF_XDP socket `socket`.
    pub fn register_socket(
        &mut self,
        queue: u32,
        socket: &impl AsRawFd,
    ) -> Result<(), DeviceError> {
        let mut map: XskMap<&mut MapData> = XskMap::try_from(
            self.ebpf
                .map_mut(map_name::XSKS)
                .ok_or_else(|| steer_err("object", "no XSKS map"))?,
        )
        .map_err(|e| steer_err("XSKS map", e))?;
        map.set(queue, socket.as_raw_fd(), 0)
            .map_err(|e| steer_err(&format!("registering socket for queue {queue}"), e))
    }

    /// Verdict counters summed over all CPUs.
    pub fn verdicts(&self) -> Result<VerdictCounts, DeviceError> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(map_name::VERDICTS)
                .ok_or_else(|| steer_err("object", "no VERDICTS map"))?,
        )
        .map_err(|e| steer_err("VERDICTS map", e))?;
        let mut counts = [0u64; VERDICT_COUNT as usize];
        for (i, slot) in counts.iter_mut().enumerate() {
            let per_cpu = map
                .get(&(i as u32), 0)
                .map_err(|e| steer_err("reading VERDICTS", e))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(VerdictCounts(counts))
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN` (rx queue 0,
    /// nothing is redirected for real) and returns the XDP action.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, DeviceError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        let result = self
            .program()?
            .test_run(opts)
            .map_err(|e| steer_err("BPF_PROG_TEST_RUN", e))?;
        Ok(result.return_value)
    }
}

/// XDP action codes (`enum xdp_action`), for reading test-run results.
pub mod xdp_action {
    /// Error in the program: packet dropped, tracepoint fired.
    pub const ABORTED: u32 = 0;
    /// Packet dropped.
    pub const DROP: u32 = 1;
    /// Packet continues into the kernel stack.
    pub const PASS: u32 = 2;
    /// Packet sent back out of the receiving interface.
    pub const TX: u32 = 3;
    /// Packet redirected (to an AF_XDP socket here).
    pub const REDIRECT: u32 = 4;
}
