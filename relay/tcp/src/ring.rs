//! A fixed-capacity byte ring used for the send and receive buffers.
//!
//! The memory is allocated on the first write and grows (doubling, up to
//! the capacity) as more bytes are held at once, so that half-open
//! connections and idle directions cost nothing and a flow that moves
//! little costs little.
//!
//! The ring holds `len` committed bytes starting at `head`; the receive side
//! also writes out-of-order bytes past `len` (into the unallocated part) and
//! commits them once the gap before them fills.

#[derive(Debug, Clone)]
pub(crate) struct Ring {
    buf: Vec<u8>,
    cap: usize,
    head: usize,
    len: usize,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Ring {
        Ring {
            buf: Vec::new(),
            cap: capacity,
            head: 0,
            len: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// Smallest allocation.
    const MIN_ALLOC: usize = 4096;

    /// Makes the buffer hold at least `needed` bytes from the head
    /// (`needed <= cap`), moving the held bytes to start at 0.
    fn reserve(&mut self, needed: usize) {
        let phys = self.buf.len();
        if needed <= phys {
            return;
        }
        let size = needed.max(phys * 2).max(Self::MIN_ALLOC).min(self.cap);
        let mut grown = vec![0; size];
        grown[..phys - self.head].copy_from_slice(&self.buf[self.head..]);
        grown[phys - self.head..phys].copy_from_slice(&self.buf[..self.head]);
        self.buf = grown;
        self.head = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn free(&self) -> usize {
        self.capacity() - self.len
    }

    fn index(&self, offset: usize) -> usize {
        let cap = self.buf.len();
        let i = self.head + offset;
        if i >= cap { i - cap } else { i }
    }

    /// Appends as much of `data` as fits; returns the bytes taken.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let n = self.write_at(self.len, data);
        self.len += n;
        n
    }

    /// Writes `data` at `offset` from the head, past or over committed
    /// bytes, without committing; returns how many bytes fit.
    pub(crate) fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
        let cap = self.capacity();
        if offset >= cap || data.is_empty() {
            return 0;
        }
        let n = data.len().min(cap - offset);
        self.reserve(offset + n);
        let phys = self.buf.len();
        let start = self.index(offset);
        let first = n.min(phys - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        n
    }

    /// Marks `n` more bytes after the committed ones as committed (bytes
    /// written earlier with [`write_at`](Self::write_at)).
    pub(crate) fn commit(&mut self, n: usize) {
        self.len = (self.len + n).min(self.capacity());
    }

    /// Copies committed bytes from `offset` into `out`; returns the count.
    pub(crate) fn read_at(&self, offset: usize, out: &mut [u8]) -> usize {
        if offset >= self.len {
            return 0;
        }
        let n = out.len().min(self.len - offset);
        let cap = self.buf.len();
        let start = self.index(offset);
        let first = n.min(cap - start);
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        n
    }

    /// Drops `n` committed bytes from the front.
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.head = self.index(n);
        self.len -= n;
    }

    /// The committed bytes as at most two slices, in order.
    pub(crate) fn as_slices(&self) -> (&[u8], &[u8]) {
        let cap = self.buf.len();
        if self.len == 0 {
            return (&[], &[]);
        }
        if self.head + self.len <= cap {
            (&self.buf[self.head..self.head + self.len], &[])
        } else {
            let first = cap - self.head;
            (&self.buf[self.head..], &self.buf[..self.len - first])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_consume_wrap() {
        let mut r = Ring::new(8);
        assert_eq!(r.push(b"abcdef"), 6);
        r.consume(4);
        assert_eq!(r.push(b"ghijklmn"), 6);
        assert_eq!(r.len(), 8);
        assert_eq!(r.free(), 0);
        let (a, b) = r.as_slices();
        assert_eq!([a, b].concat(), b"efghijkl");
        let mut out = [0u8; 5];
        assert_eq!(r.read_at(3, &mut out), 5);
        assert_eq!(&out, b"hijkl");
        assert_eq!(r.read_at(8, &mut out), 0);
        r.consume(100);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn allocates_on_first_write() {
        let mut r = Ring::new(1 << 20);
        assert_eq!(r.buf.len(), 0);
        assert_eq!(r.as_slices(), (&[][..], &[][..]));
        assert_eq!(r.push(&[]), 0);
        assert_eq!(r.buf.len(), 0);
        assert_eq!(r.push(b"x"), 1);
        assert_eq!(r.buf.len(), Ring::MIN_ALLOC);
    }

    #[test]
    fn grows_keeping_wrapped_and_out_of_order_bytes() {
        // A model: the ring must always agree with a plain byte vector.
        let mut r = Ring::new(50_000);
        let mut model: Vec<u8> = Vec::new();
        let mut next = 0u8;
        let mut seed = 7u32;
        for round in 0..2000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = (seed >> 16) as usize % 3000;
            let data: Vec<u8> = (0..n)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            if round % 3 == 0 {
                // Out of order: a gap, then the filler commits both.
                let gap = n / 2;
                let w = r.write_at(r.len() + gap, &data[gap..]);
                let f = r.write_at(r.len(), &data[..gap]);
                if f == gap && w == n - gap {
                    r.commit(n);
                    model.extend_from_slice(&data);
                } else {
                    // Did not fit: nothing committed beyond what fits whole.
                    let ok = f.min(gap);
                    r.commit(ok);
                    model.extend_from_slice(&data[..ok]);
                }
            } else {
                let k = r.push(&data);
                model.extend_from_slice(&data[..k]);
            }
            let (a, b) = r.as_slices();
            assert_eq!([a, b].concat(), model, "round {round}");
            let drop = (seed >> 8) as usize % (model.len() + 1);
            r.consume(drop);
            model.drain(..drop);
            assert!(r.buf.len() <= 50_000);
        }
    }

    #[test]
    fn out_of_order_writes_commit_later() {
        let mut r = Ring::new(8);
        r.push(b"ab");
        assert_eq!(r.write_at(4, b"efghij"), 4);
        assert_eq!(r.len(), 2);
        assert_eq!(r.write_at(2, b"cd"), 2);
        r.commit(6);
        let (a, b) = r.as_slices();
        assert_eq!([a, b].concat(), b"abcdefgh");
        assert_eq!(r.write_at(9, b"x"), 0);
    }
}
