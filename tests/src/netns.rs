//! A single throw-away namespace with a veth pair, for tests that need a real
//! interface but not the whole lab (BPF verdict tests, engine interop).

use crate::{LabError, run};

/// A namespace `name` holding a veth pair `(left, right)`, both up, TX
/// checksum offload off. Removed (with everything in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and the veth pair.
    pub fn with_veth(name: &str, left: &str, right: &str) -> Result<Netns, LabError> {
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "add", left, "type", "veth", "peer", "name", right])?;
        for ifname in [left, right] {
            run(
                "ip",
                &["netns", "exec", name, "ethtool", "-K", ifname, "tx", "off"],
            )?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <name> args...`
    pub fn ip(&self, args: &[&str]) -> Result<std::process::Output, LabError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("removing namespace {} failed: {e}", self.name);
        }
    }
}
