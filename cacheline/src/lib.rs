//! Cache-aware containers the ledger is built on: a hash index whose cache line is known
//! from the hash alone (`SlotTable`), a chunked queue that never moves what it stores
//! (`Ring`), and prefetch hints. They know nothing of tenants, money or the log.
//!
//! The one `unsafe` of the node lives here, in `hint.rs`: the prefetch instruction.
//! Every other crate of the workspace that holds rules forbids `unsafe` outright.
#![deny(unsafe_code)]

mod hint;
mod ring;
mod slots;

pub use hint::prefetch;
pub use ring::Ring;
pub use slots::SlotTable;

/// Cases per property test: `TOLLGATE_PROPTEST_CASES`, default 1000.
#[cfg(test)]
fn proptest_cases() -> u32 {
    std::env::var("TOLLGATE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}
