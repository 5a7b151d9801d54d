//! A global allocator that can count live heap bytes, for the memory-per-agent figure.
//!
//! It allocates with mimalloc, as the `tollgate` binary does, so embedded nodes behave like
//! real ones. Counting is off until `start_counting` (one relaxed load per allocation
//! otherwise), so the pair benchmark runs at the allocator's own speed.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

/// Starts counting from zero: frees of blocks allocated before count negative, so measure
/// differences between two `live_bytes` readings taken while counting.
pub fn start_counting() {
    LIVE_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
}

pub fn stop_counting() {
    COUNTING.store(false, Ordering::Relaxed);
}

/// Bytes allocated minus bytes freed since `start_counting`.
pub fn live_bytes() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Whether the binary installed this allocator (only then does counting see anything).
pub fn installed() -> bool {
    // An allocation while counting must move the counter.
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let was = COUNTING.swap(true, Ordering::Relaxed);
    let probe = std::hint::black_box(vec![0u8; 4096]);
    let moved = LIVE_BYTES.load(Ordering::Relaxed) != before;
    drop(probe);
    COUNTING.store(was, Ordering::Relaxed);
    moved
}

// SAFETY: every call is forwarded to `MiMalloc` unchanged; only a counter is updated beside it.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}
