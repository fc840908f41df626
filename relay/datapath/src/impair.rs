//! A device wrapper that loses and reorders frames, for tests on links that
//! must misbehave. The lab's kernel has no `sch_netem`, so impairment is done
//! here, in both directions, from a seed: a failing run can be replayed.

use std::time::Duration;

use crate::{Device, DeviceError, DeviceStats};

/// How a link misbehaves; probabilities in parts per million.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Impairment {
    /// Received frames dropped.
    pub rx_loss_ppm: u32,
    /// Transmitted frames dropped.
    pub tx_loss_ppm: u32,
    /// Received frames held back and delivered after the next one.
    pub rx_reorder_ppm: u32,
    /// Transmitted frames held back and sent after the next one.
    pub tx_reorder_ppm: u32,
    /// Seed of the decisions.
    pub seed: u64,
}

impl Impairment {
    /// The same loss and reordering, in percent, both ways.
    pub fn symmetric(loss_percent: f64, reorder_percent: f64, seed: u64) -> Self {
        let ppm = |p: f64| (p * 10_000.0).round().clamp(0.0, 1e6) as u32;
        Impairment {
            rx_loss_ppm: ppm(loss_percent),
            tx_loss_ppm: ppm(loss_percent),
            rx_reorder_ppm: ppm(reorder_percent),
            tx_reorder_ppm: ppm(reorder_percent),
            seed,
        }
    }
}

/// What the impairment did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpairStats {
    /// Received frames dropped.
    pub rx_dropped: u64,
    /// Transmitted frames dropped.
    pub tx_dropped: u64,
    /// Frames delivered or sent out of order.
    pub reordered: u64,
}

/// `inner` with [`Impairment`] applied.
#[derive(Debug)]
pub struct Impaired<D> {
    inner: D,
    config: Impairment,
    state: u64,
    rx_held: Option<Vec<u8>>,
    tx_held: Option<Vec<u8>>,
    /// What was done to the traffic.
    pub impair_stats: ImpairStats,
}

impl<D: Device> Impaired<D> {
    /// Wraps `inner`.
    pub fn new(inner: D, config: Impairment) -> Self {
        Impaired {
            inner,
            config,
            state: config.seed | 1,
            rx_held: None,
            tx_held: None,
            impair_stats: ImpairStats::default(),
        }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn chance(&mut self, ppm: u32) -> bool {
        if ppm == 0 {
            return false;
        }
        // xorshift64*: deterministic per seed, plenty for coin flips.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r % 1_000_000) < u64::from(ppm)
    }
}

impl<D: Device> Device for Impaired<D> {
    fn receive(
        &mut self,
        budget: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, DeviceError> {
        let mut frames = Vec::new();
        self.inner
            .receive(budget, &mut |f| frames.push(f.to_vec()))?;
        let mut delivered = 0;
        if frames.is_empty()
            && let Some(held) = self.rx_held.take()
        {
            // Nothing overtook it: it is late, not lost.
            sink(&held);
            return Ok(1);
        }
        for frame in frames {
            if self.chance(self.config.rx_loss_ppm) {
                self.impair_stats.rx_dropped += 1;
                continue;
            }
            if self.rx_held.is_none() && self.chance(self.config.rx_reorder_ppm) {
                self.rx_held = Some(frame);
                continue;
            }
            sink(&frame);
            delivered += 1;
            if let Some(held) = self.rx_held.take() {
                self.impair_stats.reordered += 1;
                sink(&held);
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<bool, DeviceError> {
        let mut frame = vec![0u8; self.inner.max_frame_len()];
        let len = build(&mut frame);
        if len == 0 {
            return Ok(true);
        }
        frame.truncate(len);
        if self.chance(self.config.tx_loss_ppm) {
            self.impair_stats.tx_dropped += 1;
            return Ok(true);
        }
        if self.tx_held.is_none() && self.chance(self.config.tx_reorder_ppm) {
            self.tx_held = Some(frame);
            return Ok(true);
        }
        if !self.inner.send(&frame)? {
            return Ok(false);
        }
        if let Some(held) = self.tx_held.take() {
            self.impair_stats.reordered += 1;
            // Under back-pressure the held frame is lost: a link may do that.
            let _ = self.inner.send(&held)?;
        }
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        // A frame held back is overtaken within its batch at most.
        if let Some(held) = self.tx_held.take() {
            let _ = self.inner.send(&held)?;
        }
        self.inner.flush()
    }

    fn wait_readable(&mut self, timeout: Duration) -> Result<bool, DeviceError> {
        if self.rx_held.is_some() {
            return Ok(true);
        }
        self.inner.wait_readable(timeout)
    }

    fn stats(&self) -> DeviceStats {
        self.inner.stats()
    }

    fn max_frame_len(&self) -> usize {
        self.inner.max_frame_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryDevice;

    #[test]
    fn loss_and_reordering_follow_the_seed() {
        let run = |seed| {
            let (a, mut b) = MemoryDevice::pair(100_000);
            let mut a = Impaired::new(a, Impairment::symmetric(10.0, 10.0, seed));
            for i in 0..10_000u32 {
                a.send(&i.to_be_bytes()).unwrap();
            }
            a.flush().unwrap();
            let mut got = Vec::new();
            b.receive(100_000, &mut |f| {
                got.push(u32::from_be_bytes([f[0], f[1], f[2], f[3]]))
            })
            .unwrap();
            (got, a.impair_stats)
        };
        let (got, stats) = run(7);
        assert_eq!(run(7).0, got, "same seed, same link");
        assert!((800..1200).contains(&stats.tx_dropped), "{stats:?}");
        assert!(stats.reordered > 500, "{stats:?}");
        assert!(
            got.windows(2).any(|w| w[0] > w[1]),
            "some frames out of order"
        );
        assert_eq!(
            got.len() as u64 + stats.tx_dropped,
            10_000,
            "every frame sent or dropped"
        );
    }
}
