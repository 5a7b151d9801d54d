//! A queue kept in fixed-size chunks, for the ledger's rings (remembered answers, audit
//! records and their bytes): pushing never moves what is already stored.
//!
//! A `VecDeque` doubles when it is full and copies everything it holds into the new
//! buffer. The ledger applies commands one at a time on every replica, so each doubling of
//! a ring holding hundreds of MB would stall every decision behind it for tens of ms. Here a full
//! chunk is followed by a new one, the oldest chunk is freed (or kept as the one spare)
//! once it is consumed, and an element is found by dividing its position by a power of two.

use std::collections::VecDeque;
use std::ops::Range;

/// The size of a chunk: big enough that the chunk list stays short (a few thousand entries
/// for the largest ring), small enough that allocating one is cheap.
const CHUNK_BYTES: usize = 64 * 1024;

/// A FIFO of `Copy` values: push at the back, pop at the front, read anywhere by position
/// (0 is the front).
#[derive(Clone)]
pub struct Ring<T> {
    /// Every chunk has room for `PER_CHUNK` values; all but the last are full.
    chunks: VecDeque<Vec<T>>,
    /// Values already popped from the front of `chunks[0]`.
    head: usize,
    len: usize,
    /// One consumed chunk kept for the next push: a ring in steady state allocates nothing.
    spare: Option<Vec<T>>,
}

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Ring {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
            spare: None,
        }
    }
}

/// Its length only: a ring may hold hundreds of MB.
impl<T> std::fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("len", &self.len).finish()
    }
}

impl<T: Copy> Ring<T> {
    /// Values a chunk holds: the largest power of two that fits in `CHUNK_BYTES` (at least 1).
    const PER_CHUNK: usize = {
        let fit = CHUNK_BYTES
            / if size_of::<T>() == 0 {
                1
            } else {
                size_of::<T>()
            };
        if fit == 0 {
            1
        } else {
            1 << (usize::BITS - 1 - fit.leading_zeros())
        }
    };

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at `index` from the front.
    pub fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len {
            return None;
        }
        let at = self.head + index;
        self.chunks
            .get(at / Self::PER_CHUNK)?
            .get(at % Self::PER_CHUNK)
    }

    pub fn front(&self) -> Option<&T> {
        self.get(0)
    }

    pub fn back(&self) -> Option<&T> {
        self.get(self.len.checked_sub(1)?)
    }

    /// The last chunk, if it has room; else a new (or the spare) chunk pushed at the back.
    fn room(&mut self) -> &mut Vec<T> {
        if self
            .chunks
            .back()
            .is_none_or(|c| c.len() == Self::PER_CHUNK)
        {
            let chunk = self
                .spare
                .take()
                .unwrap_or_else(|| Vec::with_capacity(Self::PER_CHUNK));
            self.chunks.push_back(chunk);
        }
        let last = self.chunks.len() - 1;
        &mut self.chunks[last]
    }

    pub fn push_back(&mut self, value: T) {
        self.room().push(value);
        self.len += 1;
    }

    pub fn extend_from_slice(&mut self, mut values: &[T]) {
        while !values.is_empty() {
            let chunk = self.room();
            let n = values.len().min(Self::PER_CHUNK - chunk.len());
            chunk.extend_from_slice(&values[..n]);
            self.len += n;
            values = &values[n..];
        }
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let value = *self.front()?;
        self.drop_front(1);
        Some(value)
    }

    /// Drops the `n` values at the front (all of them if there are fewer).
    pub fn drop_front(&mut self, n: usize) {
        let mut n = n.min(self.len);
        while n > 0 {
            let Some(first) = self.chunks.front() else {
                break;
            };
            let taken = n.min(first.len() - self.head);
            if taken == 0 {
                break; // unreachable: a chunk with nothing left to drop was recycled
            }
            self.head += taken;
            self.len -= taken;
            n -= taken;
            if self.head == Self::PER_CHUNK || self.len == 0 {
                // Consumed (or all that is left of the ring): recycle it.
                if let Some(mut chunk) = self.chunks.pop_front() {
                    chunk.clear();
                    self.spare = Some(chunk);
                }
                self.head = 0;
            }
        }
    }

    /// The values in `range` as slices, front to back; nothing if the range is out of
    /// bounds.
    pub fn slices(&self, range: Range<usize>) -> Slices<'_, T> {
        let (next, end) = if range.start < range.end && range.end <= self.len {
            (self.head + range.start, self.head + range.end)
        } else {
            (0, 0)
        };
        Slices {
            ring: self,
            next,
            end,
        }
    }

    /// The values in `range`, front to back; nothing if the range is out of bounds. Exact
    /// in size, as serde's `collect_seq` needs for postcard.
    pub fn range(&self, range: Range<usize>) -> Iter<'_, T> {
        let slices = self.slices(range);
        Iter {
            len: slices.end - slices.next,
            slices,
            current: [].iter(),
        }
    }

    pub fn iter(&self) -> Iter<'_, T> {
        self.range(0..self.len)
    }

    /// The number of values at the front for which `pred` holds, given that it holds for a
    /// prefix of the ring and not after (binary search).
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(value) if pred(value) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }
}

/// A range of a `Ring` as one slice per chunk it spans.
#[derive(Clone)]
pub struct Slices<'a, T> {
    ring: &'a Ring<T>,
    /// Where the rest of the range starts and where it ends, both counted like
    /// `Ring::head` (from the start of the first chunk).
    next: usize,
    end: usize,
}

impl<'a, T: Copy> Iterator for Slices<'a, T> {
    type Item = &'a [T];

    fn next(&mut self) -> Option<&'a [T]> {
        if self.next >= self.end {
            return None;
        }
        let chunk = self.next / Ring::<T>::PER_CHUNK;
        let base = chunk * Ring::<T>::PER_CHUNK;
        let stop = self.end.min(base + Ring::<T>::PER_CHUNK);
        let slice = self
            .ring
            .chunks
            .get(chunk)?
            .get(self.next - base..stop - base)?;
        self.next = stop;
        Some(slice)
    }
}

/// The values of a range of a `Ring`, a chunk's slice at a time.
#[derive(Clone)]
pub struct Iter<'a, T> {
    slices: Slices<'a, T>,
    current: std::slice::Iter<'a, T>,
    /// Values left, `current`'s included.
    len: usize,
}

impl<'a, T: Copy> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        loop {
            if let Some(value) = self.current.next() {
                self.len -= 1;
                return Some(value);
            }
            self.current = self.slices.next()?.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len, Some(self.len))
    }
}

impl<T: Copy> ExactSizeIterator for Iter<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 512 bytes: 128 to a chunk, so short runs cross chunk boundaries.
    type E = [u16; 256];

    fn e(v: u16) -> E {
        [v; 256]
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(u16),
        Extend(Vec<u16>),
        Pop,
        Drop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u16>().prop_map(Op::Push),
            // Up to two chunks and a bit.
            proptest::collection::vec(any::<u16>(), 0..300).prop_map(Op::Extend),
            Just(Op::Pop),
            (0usize..300).prop_map(Op::Drop),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases()))]

        /// The ring holds exactly what a `VecDeque` fed the same operations holds.
        #[test]
        fn behaves_as_a_vec_deque(ops in proptest::collection::vec(op(), 0..40), probe in any::<prop::sample::Index>()) {
            assert_eq!(Ring::<E>::PER_CHUNK, 128);
            let mut ring = Ring::<E>::default();
            let mut model = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(v) => {
                        ring.push_back(e(v));
                        model.push_back(e(v));
                    }
                    Op::Extend(vs) => {
                        let vs: Vec<E> = vs.into_iter().map(e).collect();
                        ring.extend_from_slice(&vs);
                        model.extend(&vs);
                    }
                    Op::Pop => prop_assert_eq!(ring.pop_front(), model.pop_front()),
                    Op::Drop(n) => {
                        ring.drop_front(n);
                        model.drain(..n.min(model.len()));
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert_eq!(ring.front(), model.front());
                prop_assert_eq!(ring.back(), model.back());
                // Memory follows what is held: no more than two chunks beyond it.
                prop_assert!(ring.chunks.len() <= model.len() / Ring::<E>::PER_CHUNK + 2);
            }
            prop_assert!(ring.iter().eq(model.iter()));
            if !model.is_empty() {
                let i = probe.index(model.len());
                prop_assert_eq!(ring.get(i), model.get(i));
                let j = i + (model.len() - i) / 2;
                prop_assert!(ring.range(i..j).eq(model.range(i..j)));
                prop_assert_eq!(ring.range(i..j).len(), j - i);
                let from_slices: Vec<E> = ring.slices(i..j).flatten().copied().collect();
                prop_assert!(from_slices.iter().eq(model.range(i..j)));
            }
            prop_assert_eq!(ring.get(model.len()), None);
            prop_assert_eq!(ring.range(0..model.len() + 1).count(), 0);
            prop_assert_eq!(ring.slices(0..model.len() + 1).count(), 0);
        }
    }

    #[test]
    fn partition_point_finds_the_first_value_past_the_prefix() {
        let mut ring = Ring::<u64>::default();
        for v in 0..20_000u64 {
            ring.push_back(v);
        }
        ring.drop_front(5_000);
        assert_eq!(ring.partition_point(|&v| v < 12_345), 12_345 - 5_000);
        assert_eq!(ring.partition_point(|_| false), 0);
    }

    #[test]
    fn a_chunk_holds_a_power_of_two_of_values() {
        assert_eq!(Ring::<u8>::PER_CHUNK, 65_536);
        assert_eq!(Ring::<[u8; 48]>::PER_CHUNK, 1_024);
        assert_eq!(Ring::<[u8; 100_000]>::PER_CHUNK, 1);
    }
}
