//! Prefetch hints: the one `unsafe` of the node. A prefetch reads no memory architecturally
//! and cannot fault, whatever the address, so the only thing it can change is timing.
//! The ledger bench (`cargo bench -p tollgate-ledger --bench ledger`) defends it: it times the
//! ledger with and without `prefetch_upcoming` in alternating rounds.

/// A cache line, as far as prefetching is concerned.
const LINE_BYTES: usize = 64;
/// Most bytes of one object or slice that `prefetch` asks for.
const PREFETCH_BYTES_MAX: usize = 16 * LINE_BYTES;

/// Hints the CPU to bring the cache lines holding `value` (at most `PREFETCH_BYTES_MAX`
/// of it) into the cache, one request per line. It never faults and changes nothing but
/// timing.
#[inline]
pub fn prefetch<T: ?Sized>(value: &T) {
    let start: *const u8 = (value as *const T).cast();
    let bytes = size_of_val(value).min(PREFETCH_BYTES_MAX);
    if bytes == 0 {
        return;
    }
    // From the line `start` is in to the line of the last byte.
    let into_line = start.addr() % LINE_BYTES;
    let lines = (into_line + bytes).div_ceil(LINE_BYTES);
    let first_line = start.wrapping_sub(into_line);
    for line in 0..lines {
        prefetch_line(first_line.wrapping_add(line * LINE_BYTES));
    }
}

/// One prefetch instruction (`prefetcht0`).
#[inline]
#[allow(unsafe_code)]
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads no memory architecturally and cannot fault,
    // whatever the address; callers pass addresses inside a live reference or allocation.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
