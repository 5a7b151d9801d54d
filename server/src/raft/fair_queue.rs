//! The proposal queue, fair across tenants: each tenant's commands wait in its own lane, at
//! most its `proposals_queued` quota of them, and batches take one command from each lane
//! in turn. A tenant that floods the queue is refused at its quota and delays another
//! tenant's command by at most one command of its own per batch, so another tenant's
//! command waits only behind its own tenant's commands and one turn of each other lane.

use std::collections::{HashMap, VecDeque};

use tollgate_ledger::{Bound, Command, Rejection, TenantId};

/// Whose lane a command waits in: the tenant for the data plane (reserve, commit, release,
/// record), None for admin commands and ticks, which no tenant's quota may hold back (an
/// operator must be able to freeze a flooding tenant).
pub fn lane_of(command: &Command) -> Option<&TenantId> {
    match command {
        Command::Reserve { tenant, .. }
        | Command::Commit { tenant, .. }
        | Command::Release { tenant, .. }
        | Command::Record { tenant, .. } => Some(tenant),
        _ => None,
    }
}

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The whole queue holds `max` items.
    Full,
    /// The tenant's lane holds its quota: `Rejection::BoundReached` naming it.
    Quota(Rejection),
}

/// Items in lanes, with the order in which non-empty lanes take their turns.
pub struct FairQueue<T> {
    lanes: HashMap<Option<TenantId>, VecDeque<T>>,
    /// Each non-empty lane once, in turn order.
    turns: VecDeque<Option<TenantId>>,
    len: usize,
    max: usize,
}

impl<T> FairQueue<T> {
    /// A queue of at most `max` items over all lanes.
    pub fn new(max: usize) -> Self {
        FairQueue {
            lanes: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
            max,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Queues `item` in `lane`, which may hold at most `quota` items (None: only the whole
    /// queue's bound applies).
    pub fn push(
        &mut self,
        item: T,
        lane: Option<&TenantId>,
        quota: Option<u64>,
    ) -> Result<(), Refused> {
        if self.len >= self.max {
            return Err(Refused::Full);
        }
        let key = lane.cloned();
        let waiting = self.lanes.get(&key).map_or(0, VecDeque::len);
        if let (Some(tenant), Some(quota)) = (lane, quota) {
            if waiting as u64 >= quota {
                return Err(Refused::Quota(Rejection::quota_reached(
                    Bound::ProposalsQueuedPerTenant,
                    quota,
                    tenant,
                )));
            }
        }
        if waiting == 0 {
            self.turns.push_back(key.clone());
        }
        self.lanes.entry(key).or_default().push_back(item);
        self.len += 1;
        Ok(())
    }

    /// Moves up to `max` items into `out`, one from each lane in turn; a lane that still
    /// has items goes to the back of the turns.
    pub fn drain_into(&mut self, out: &mut Vec<T>, max: usize) {
        while out.len() < max {
            let Some(key) = self.turns.pop_front() else {
                break;
            };
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            if let Some(item) = lane.pop_front() {
                out.push(item);
                self.len -= 1;
            }
            if lane.is_empty() {
                self.lanes.remove(&key);
            } else {
                self.turns.push_back(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    /// A tenant flooding past its quota is refused, naming the bound and itself, while a
    /// second tenant's commands are still admitted, and served in the very next batch.
    #[test]
    fn a_flooding_tenant_is_refused_at_its_quota_and_another_is_served_first() {
        let (noisy, victim) = (tenant("noisy"), tenant("victim"));
        let mut queue = FairQueue::new(10_000);
        let mut refused = 0;
        for i in 0..1_000 {
            match queue.push(("noisy", i), Some(&noisy), Some(100)) {
                Ok(()) => {}
                Err(Refused::Quota(rejection)) => {
                    assert_eq!(
                        rejection,
                        Rejection::quota_reached(Bound::ProposalsQueuedPerTenant, 100, &noisy)
                    );
                    let text = rejection.to_string();
                    assert!(text.contains("PROPOSALS_QUEUED_PER_TENANT_MAX"), "{text}");
                    assert!(text.contains("noisy"), "{text}");
                    refused += 1;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(refused, 900);
        for i in 0..3 {
            queue.push(("victim", i), Some(&victim), Some(100)).unwrap();
        }
        queue.push(("admin", 0), None, None).unwrap();
        let mut batch = Vec::new();
        queue.drain_into(&mut batch, 8);
        assert_eq!(
            batch,
            [
                ("noisy", 0),
                ("victim", 0),
                ("admin", 0),
                ("noisy", 1),
                ("victim", 1),
                ("noisy", 2),
                ("victim", 2),
                ("noisy", 3)
            ]
        );
        // The rest is the noisy tenant's, in its own order.
        batch.clear();
        queue.drain_into(&mut batch, 1_000);
        assert_eq!(batch, (4..100).map(|i| ("noisy", i)).collect::<Vec<_>>());
        assert_eq!(queue.len(), 0);
        // Drained, the noisy tenant may queue again.
        queue.push(("noisy", 100), Some(&noisy), Some(100)).unwrap();
    }

    /// The whole queue's bound holds over all lanes, admin's included.
    #[test]
    fn the_whole_queue_is_bounded() {
        let mut queue = FairQueue::new(3);
        for i in 0..3 {
            queue
                .push(i, Some(&tenant(&format!("t{i}"))), Some(10))
                .unwrap();
        }
        assert_eq!(queue.push(3, None, None), Err(Refused::Full));
        assert_eq!(
            queue.push(3, Some(&tenant("t9")), Some(10)),
            Err(Refused::Full)
        );
    }
}
