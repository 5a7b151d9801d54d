//! Open loop: one thread releases every worker's pairs at their due times.
//!
//! tokio's timer wakes on whole-millisecond ticks, so a task that sleeps until a due time
//! wakes up to ~1 ms after it, and since open loop measures a reserve from its due time,
//! that lateness of the harness's own timer was charged to every reserve (Redis at 1,000
//! pairs/s: reserve p50 0.75-1.47 ms against commit p50 0.10 ms). A thread's sleep ends
//! within tens of microseconds of its deadline, so the pacer sleeps in a thread and hands
//! each due time to its worker, which is then already due and sends at once.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

/// Due times queued per worker. A worker this far behind has long stopped measuring
/// anything but the system's backlog; further due times are counted as missed.
pub const DUE_QUEUED_PER_WORKER_MAX: usize = 1_024;

/// The due times of one run: slot `s` (the `s / workers`-th pair of worker `s % workers`)
/// is due `s / rate` seconds after `start`, so the workers together offer `rate` pairs/s.
pub struct Schedule {
    pub start: Instant,
    pub rate: f64,
    /// No pair is due at or after this.
    pub until: Instant,
}

impl Schedule {
    pub fn due(&self, slot: u64) -> Instant {
        self.start + Duration::from_secs_f64(slot as f64 / self.rate)
    }
}

/// Starts the pacer for `workers` workers; each receives its due times, in order, on its
/// receiver, which closes when the schedule is over. The thread returns how many due times
/// it dropped because their worker's queue was full.
pub fn start(
    schedule: Schedule,
    workers: usize,
) -> anyhow::Result<(Vec<mpsc::Receiver<Instant>>, JoinHandle<u64>)> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| mpsc::channel(DUE_QUEUED_PER_WORKER_MAX))
        .unzip();
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || release(&schedule, &senders))
        .context("starting the open-loop pacer thread")?;
    Ok((receivers, pacer))
}

fn release(schedule: &Schedule, senders: &[mpsc::Sender<Instant>]) -> u64 {
    let mut dropped = 0;
    if senders.is_empty() {
        return dropped;
    }
    for slot in 0u64.. {
        let due = schedule.due(slot);
        if due >= schedule.until {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let worker = (slot % senders.len() as u64) as usize;
        if let Err(mpsc::error::TrySendError::Full(_)) = senders[worker].try_send(due) {
            dropped += 1;
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spread_evenly_at_the_rate() {
        let start = Instant::now();
        let schedule = Schedule {
            start,
            rate: 4.0,
            until: start + Duration::from_secs(10),
        };
        assert_eq!(schedule.due(0), start);
        assert_eq!(schedule.due(1), start + Duration::from_millis(250));
        assert_eq!(schedule.due(8), start + Duration::from_secs(2));
    }

    #[test]
    fn each_worker_gets_its_slots_in_order_then_the_end() {
        let start = Instant::now();
        let schedule = Schedule {
            start,
            rate: 10_000.0,
            // Slots 0..=4 are due before it: 0, 100, ..., 400 µs.
            until: start + Duration::from_micros(450),
        };
        let (mut receivers, pacer) = super::start(schedule, 2).unwrap();
        assert_eq!(pacer.join().unwrap(), 0);
        let mut got = Vec::new();
        for receiver in &mut receivers {
            let mut times = Vec::new();
            while let Some(due) = receiver.blocking_recv() {
                times.push(due.duration_since(start).as_micros());
            }
            got.push(times);
        }
        assert_eq!(got, [vec![0, 200, 400], vec![100, 300]]);
    }

    #[test]
    fn a_worker_far_behind_has_its_extra_due_times_counted_as_dropped() {
        let start = Instant::now();
        // Every slot is already due: the pacer queues them as fast as it can, and nobody
        // receives.
        let schedule = Schedule {
            start: start - Duration::from_secs(10),
            rate: 1_000.0,
            until: start - Duration::from_secs(8),
        };
        let (receivers, pacer) = super::start(schedule, 1).unwrap();
        assert_eq!(
            pacer.join().unwrap(),
            2_000 - DUE_QUEUED_PER_WORKER_MAX as u64
        );
        drop(receivers);
    }
}
