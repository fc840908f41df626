//! A fixed-capacity byte ring used for the send and receive buffers.
//!
//! The memory is allocated on the first write, so that half-open
//! connections (and idle directions) cost no buffer space.
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

    fn allocate(&mut self) {
        if self.buf.len() != self.cap {
            self.buf = vec![0; self.cap];
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn free(&self) -> usize {
        self.capacity() - self.len
    }

    fn index(&self, offset: usize) -> usize {
        let cap = self.capacity();
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
        self.allocate();
        let n = data.len().min(cap - offset);
        let start = self.index(offset);
        let first = n.min(cap - start);
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
        let cap = self.capacity();
        let start = self.index(offset);
        let first = n.min(cap - start);
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        n
    }

    /// Drops `n` committed bytes from the front.
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = self.index(n);
        self.len -= n;
    }

    /// The committed bytes as at most two slices, in order.
    pub(crate) fn as_slices(&self) -> (&[u8], &[u8]) {
        let cap = self.capacity();
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
        assert_eq!(r.buf.len(), 1 << 20);
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
