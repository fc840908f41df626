//! An in-process device pair: what one end transmits, the other receives.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::{Device, DeviceError, DeviceStats};

/// Largest frame a memory device carries: a jumbo-free Ethernet frame.
pub const MEMORY_MAX_FRAME: usize = 9216;

#[derive(Debug, Default)]
struct Queue {
    frames: Mutex<VecDeque<Vec<u8>>>,
    readable: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
        // A panic in another test thread must not cascade into this one.
        self.frames
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// One end of an in-memory link with a bounded queue per direction; frames
/// beyond the bound are dropped (and counted), as on a real link.
#[derive(Debug)]
pub struct MemoryDevice {
    rx: Arc<Queue>,
    tx: Arc<Queue>,
    capacity: usize,
    stats: DeviceStats,
}

impl MemoryDevice {
    /// Two connected ends, each direction holding at most `capacity` frames.
    pub fn pair(capacity: usize) -> (MemoryDevice, MemoryDevice) {
        let a_to_b = Arc::new(Queue::default());
        let b_to_a = Arc::new(Queue::default());
        let a = MemoryDevice {
            rx: b_to_a.clone(),
            tx: a_to_b.clone(),
            capacity,
            stats: DeviceStats::default(),
        };
        let b = MemoryDevice {
            rx: a_to_b,
            tx: b_to_a,
            capacity,
            stats: DeviceStats::default(),
        };
        (a, b)
    }
}

impl Device for MemoryDevice {
    fn receive(
        &mut self,
        budget: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, DeviceError> {
        let mut taken = Vec::new();
        {
            let mut queue = self.rx.lock();
            while taken.len() < budget {
                match queue.pop_front() {
                    Some(frame) => taken.push(frame),
                    None => break,
                }
            }
        }
        for frame in &taken {
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += frame.len() as u64;
            sink(frame);
        }
        Ok(taken.len())
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<bool, DeviceError> {
        let mut buf = vec![0u8; MEMORY_MAX_FRAME];
        let len = build(&mut buf).min(MEMORY_MAX_FRAME);
        if len == 0 {
            return Ok(true);
        }
        buf.truncate(len);
        let mut queue = self.tx.lock();
        if queue.len() >= self.capacity {
            self.stats.tx_backpressure += 1;
            return Ok(false);
        }
        queue.push_back(buf);
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.tx.readable.notify_all();
        Ok(())
    }

    fn wait_readable(&mut self, timeout: Duration) -> Result<bool, DeviceError> {
        let queue = self.rx.lock();
        if !queue.is_empty() {
            return Ok(true);
        }
        let (queue, _) = self
            .rx
            .readable
            .wait_timeout(queue, timeout)
            .unwrap_or_else(|poison| poison.into_inner());
        Ok(!queue.is_empty())
    }

    fn stats(&self) -> DeviceStats {
        self.stats
    }

    fn max_frame_len(&self) -> usize {
        MEMORY_MAX_FRAME
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_bound_applies() {
        let (mut a, mut b) = MemoryDevice::pair(2);
        assert!(a.send(b"one").unwrap());
        assert!(a.send(b"two").unwrap());
        assert!(!a.send(b"three").unwrap(), "third frame exceeds capacity 2");
        a.flush().unwrap();
        assert!(b.wait_readable(Duration::from_millis(1)).unwrap());
        let mut got = Vec::new();
        assert_eq!(b.receive(8, &mut |f| got.push(f.to_vec())).unwrap(), 2);
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(a.stats().tx_backpressure, 1);
        assert_eq!(b.stats().rx_bytes, 6);
    }

    #[test]
    fn oversized_send_is_an_error() {
        let (mut a, _b) = MemoryDevice::pair(1);
        let big = vec![0u8; MEMORY_MAX_FRAME + 1];
        assert!(matches!(
            a.send(&big),
            Err(DeviceError::FrameTooLong { .. })
        ));
    }
}
