//! Running the calling thread inside a named network namespace.
//!
//! A network namespace is a per-thread attribute, so a test or a lab tool can
//! run one thread per namespace of the lab inside a single process. Sockets
//! keep the namespace they were created in, even after the thread leaves it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::DeviceError;

/// Where `ip netns add NAME` mounts a namespace.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The calling thread is in the namespace `name` until this guard drops; then
/// it returns to the namespace it came from.
#[derive(Debug)]
pub struct NetnsGuard {
    original: File,
    name: String,
}

impl NetnsGuard {
    /// Moves the calling thread into the network namespace `name`.
    pub fn enter(name: &str) -> Result<NetnsGuard, DeviceError> {
        let original =
            File::open(current_thread_netns()).map_err(|source| DeviceError::Syscall {
                call: "open current network namespace".into(),
                source,
            })?;
        let target_path = Path::new(NETNS_RUN_DIR).join(name);
        let target = File::open(&target_path).map_err(|source| DeviceError::Syscall {
            call: format!("open {}", target_path.display()),
            source,
        })?;
        set_netns(&target, name)?;
        Ok(NetnsGuard {
            original,
            name: name.to_string(),
        })
    }

    /// The namespace this guard entered.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = set_netns(&self.original, "original") {
            tracing::error!(namespace = %self.name, error = %e, "could not leave network namespace");
        }
    }
}

fn current_thread_netns() -> String {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    format!("/proc/self/task/{tid}/ns/net")
}

fn set_netns(ns: &File, what: &str) -> Result<(), DeviceError> {
    // SAFETY: `ns` is an open namespace file for the whole call; setns only
    // changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(DeviceError::last_os(format!("setns into {what}")));
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name` and returns its result.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T, DeviceError>>, DeviceError> {
    let name = name.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            let _guard = NetnsGuard::enter(&name)?;
            Ok(f())
        })
        .map_err(|source| DeviceError::Syscall {
            call: "spawn namespace thread".into(),
            source,
        })
}
