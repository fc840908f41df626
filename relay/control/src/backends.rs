//! A service's backend pool: choice of a backend for a new flow and the
//! health state that active checks (and failed relayed connects) drive.
//!
//! Pure bookkeeping: the checks themselves (a TCP connect with a timeout)
//! run in the control plane and report here with [`BackendPool::report_check`].
//! Backends start up, as HAProxy's do: a service answers from the first
//! second, and `fall` failed checks take a dead backend out.

use std::net::SocketAddrV4;

use crate::config::{Balance, HealthCheck};

/// Health of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Receives new flows.
    Up,
    /// Receives no new flows until `rise` checks succeed in a row.
    Down,
}

impl Health {
    /// Lower-case name, for status output and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// One backend's state, as status and metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    /// Address.
    pub addr: SocketAddrV4,
    /// Health.
    pub health: Health,
    /// Flows relayed to it now.
    pub active_flows: u32,
    /// Checks failed in a row (0 when the last succeeded).
    pub failures_in_a_row: u32,
    /// Health changes since start.
    pub transitions: u64,
}

#[derive(Clone, Debug)]
struct Backend {
    addr: SocketAddrV4,
    health: Health,
    successes: u32,
    failures: u32,
    active_flows: u32,
    transitions: u64,
}

impl Backend {
    fn new(addr: SocketAddrV4) -> Self {
        Backend {
            addr,
            health: Health::Up,
            successes: 0,
            failures: 0,
            active_flows: 0,
            transitions: 0,
        }
    }
}

/// The backends of one service.
#[derive(Clone, Debug)]
pub struct BackendPool {
    backends: Vec<Backend>,
    balance: Balance,
    rise: u32,
    fall: u32,
    next: usize,
}

/// A backend chosen for a flow: its index (for [`BackendPool::flow_closed`]) and address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Index in the pool.
    pub index: usize,
    /// Where to connect.
    pub addr: SocketAddrV4,
}

impl BackendPool {
    /// A pool of `addrs`, all up.
    pub fn new(addrs: &[SocketAddrV4], balance: Balance, health: &HealthCheck) -> Self {
        BackendPool {
            backends: addrs.iter().copied().map(Backend::new).collect(),
            balance,
            rise: health.rise.max(1),
            fall: health.fall.max(1),
            next: 0,
        }
    }

    /// A healthy backend for a new flow, or `None` when every backend is
    /// down (the flow then gets a clean close).
    pub fn pick(&mut self) -> Option<Pick> {
        let n = self.backends.len();
        let index = match self.balance {
            Balance::RoundRobin => {
                let found = (0..n)
                    .map(|k| (self.next + k) % n)
                    .find(|&i| self.backends[i].health == Health::Up)?;
                self.next = (found + 1) % n;
                found
            }
            Balance::LeastConnections => {
                // Ties go round robin, so equal backends share the load.
                let start = self.next;
                let found = (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| self.backends[i].health == Health::Up)
                    .min_by_key(|&i| self.backends[i].active_flows)?;
                self.next = (found + 1) % n;
                found
            }
        };
        let backend = &mut self.backends[index];
        backend.active_flows += 1;
        Some(Pick {
            index,
            addr: backend.addr,
        })
    }

    /// A flow adopted from a peer relay, relayed to `addr`: counted as
    /// one of that backend's flows (`None` if the pool has no such
    /// backend, e.g. after a reload on one relay only).
    pub fn adopt(&mut self, addr: SocketAddrV4) -> Option<Pick> {
        let index = self.backends.iter().position(|b| b.addr == addr)?;
        self.backends[index].active_flows += 1;
        Some(Pick { index, addr })
    }

    /// A flow relayed to `index` ended.
    pub fn flow_closed(&mut self, index: usize) {
        if let Some(b) = self.backends.get_mut(index) {
            b.active_flows = b.active_flows.saturating_sub(1);
        }
    }

    /// The result of a health check (or of a relayed connect: a refused or
    /// timed-out connect counts as a failed check). Returns the new health
    /// when it changed.
    pub fn report_check(&mut self, index: usize, ok: bool) -> Option<Health> {
        let (rise, fall) = (self.rise, self.fall);
        let b = self.backends.get_mut(index)?;
        if ok {
            b.failures = 0;
            b.successes = b.successes.saturating_add(1);
            if b.health == Health::Down && b.successes >= rise {
                b.health = Health::Up;
                b.transitions += 1;
                return Some(Health::Up);
            }
        } else {
            b.successes = 0;
            b.failures = b.failures.saturating_add(1);
            if b.health == Health::Up && b.failures >= fall {
                b.health = Health::Down;
                b.transitions += 1;
                return Some(Health::Down);
            }
        }
        None
    }

    /// Addresses to check, by index.
    pub fn addrs(&self) -> impl Iterator<Item = (usize, SocketAddrV4)> + '_ {
        self.backends.iter().enumerate().map(|(i, b)| (i, b.addr))
    }

    /// Every backend's state.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.backends
            .iter()
            .map(|b| BackendStatus {
                addr: b.addr,
                health: b.health,
                active_flows: b.active_flows,
                failures_in_a_row: b.failures,
                transitions: b.transitions,
            })
            .collect()
    }

    /// Replaces the backend list (configuration reload). Backends that stay
    /// keep their health and flow counts; new ones start up; removed ones
    /// take no new flows (their flows finish on their own).
    pub fn reload(&mut self, addrs: &[SocketAddrV4], balance: Balance, health: &HealthCheck) {
        let old = std::mem::take(&mut self.backends);
        self.backends = addrs
            .iter()
            .map(|a| {
                old.iter()
                    .find(|b| b.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Backend::new(*a))
            })
            .collect();
        self.balance = balance;
        self.rise = health.rise.max(1);
        self.fall = health.fall.max(1);
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddrV4> {
        (0..n)
            .map(|i| SocketAddrV4::new([10, 0, 0, 1 + i as u8].into(), 8080))
            .collect()
    }

    fn hc(rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            rise,
            fall,
            ..HealthCheck::default()
        }
    }

    #[test]
    fn an_adopted_flow_counts_with_its_backend() {
        let a = addrs(2);
        let mut pool = BackendPool::new(&a, Balance::LeastConnections, &hc(2, 1));
        let pick = pool.adopt(a[1]).expect("a backend of the pool");
        assert_eq!(
            pick,
            Pick {
                index: 1,
                addr: a[1]
            }
        );
        // The next new flow goes to the backend with fewer flows.
        assert_eq!(pool.pick().map(|p| p.index), Some(0));
        pool.flow_closed(pick.index);
        assert_eq!(pool.status()[1].active_flows, 0);
        assert_eq!(
            pool.adopt(SocketAddrV4::new([10, 9, 9, 9].into(), 80)),
            None
        );
    }

    #[test]
    fn round_robin_cycles_over_healthy_backends() {
        let a = addrs(3);
        let mut pool = BackendPool::new(&a, Balance::RoundRobin, &hc(2, 1));
        let picks: Vec<usize> = (0..6).map(|_| pool.pick().unwrap().index).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(pool.report_check(1, false), Some(Health::Down));
        let picks: Vec<usize> = (0..4).map(|_| pool.pick().unwrap().index).collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let a = addrs(3);
        let mut pool = BackendPool::new(&a, Balance::LeastConnections, &hc(1, 1));
        let first: Vec<usize> = (0..3).map(|_| pool.pick().unwrap().index).collect();
        assert_eq!(first, vec![0, 1, 2]);
        pool.flow_closed(1);
        assert_eq!(pool.pick().unwrap().index, 1);
        pool.flow_closed(2);
        pool.flow_closed(2);
        assert_eq!(pool.pick().unwrap().index, 2);
        assert_eq!(pool.status()[2].active_flows, 1);
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut pool = BackendPool::new(&addrs(1), Balance::RoundRobin, &hc(2, 3));
        assert_eq!(pool.report_check(0, false), None);
        assert_eq!(pool.report_check(0, false), None);
        assert_eq!(
            pool.report_check(0, true),
            None,
            "a success resets the failure run"
        );
        assert_eq!(pool.report_check(0, false), None);
        assert_eq!(pool.report_check(0, false), None);
        assert_eq!(pool.report_check(0, false), Some(Health::Down));
        assert_eq!(pool.pick(), None, "no healthy backend: no pick");
        assert_eq!(pool.report_check(0, true), None);
        assert_eq!(pool.report_check(0, true), Some(Health::Up));
        assert!(pool.pick().is_some());
        assert_eq!(pool.status()[0].transitions, 2);
    }

    #[test]
    fn reload_keeps_state_of_backends_that_stay() {
        let a = addrs(3);
        let mut pool = BackendPool::new(&a, Balance::RoundRobin, &hc(1, 1));
        pool.pick();
        pool.report_check(2, false);
        let kept = vec![a[2], a[0], SocketAddrV4::new([10, 0, 0, 9].into(), 80)];
        pool.reload(&kept, Balance::RoundRobin, &hc(1, 1));
        let st = pool.status();
        assert_eq!(st[0].health, Health::Down);
        assert_eq!(st[1].active_flows, 1);
        assert_eq!(st[2].health, Health::Up);
        assert_eq!(st[2].active_flows, 0);
        // Out-of-range indices are ignored, not a panic.
        pool.flow_closed(99);
        assert_eq!(pool.report_check(99, true), None);
    }

    #[test]
    fn an_empty_pool_picks_nothing() {
        let mut pool = BackendPool::new(&[], Balance::LeastConnections, &hc(1, 1));
        assert_eq!(pool.pick(), None);
    }
}
