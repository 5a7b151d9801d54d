//! How the Raft core ended: a node must tell a core that failed (storage, a panic inside it),
//! which never applies another entry, from one stopped on purpose.

use openraft::error::Fatal;
use openraft::RaftMetrics;
use tokio::sync::watch;

use super::{Member, NodeId};

/// Why the Raft core stopped on its own (a storage error, a panic inside it), once it has.
/// `None` when it was stopped on purpose (`shutdown`), or its metrics are gone while it ran.
pub async fn raft_failure(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, Member>>,
) -> Option<Fatal<NodeId>> {
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return failure_of(fatal);
        }
        if metrics.changed().await.is_err() {
            // The core is gone: its last published state says how it ended.
            return metrics
                .borrow()
                .running_state
                .clone()
                .err()
                .and_then(|f| failure_of(&f));
        }
    }
}

fn failure_of(fatal: &Fatal<NodeId>) -> Option<Fatal<NodeId>> {
    match fatal {
        Fatal::Stopped => None,
        failure => Some(failure.clone()),
    }
}

#[cfg(test)]
mod tests {
    use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

    use super::*;

    fn metrics_with(state: Result<(), Fatal<NodeId>>) -> RaftMetrics<NodeId, Member> {
        let mut metrics = RaftMetrics::new_initial(1);
        metrics.running_state = state;
        metrics
    }

    fn storage_failure() -> Fatal<NodeId> {
        let io = std::io::Error::other("no space left on device");
        Fatal::StorageError(StorageError::IO {
            source: StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Write, AnyError::new(&io)),
        })
    }

    #[tokio::test]
    async fn a_failed_core_is_reported_and_a_stopped_one_is_not() {
        let cases = [
            (Err(storage_failure()), Some(storage_failure())),
            (Err(Fatal::Panicked), Some(Fatal::Panicked)),
            (Err(Fatal::Stopped), None),
        ];
        for (state, expected) in cases {
            let (sender, receiver) = watch::channel(metrics_with(Ok(())));
            let watcher = tokio::spawn(raft_failure(receiver));
            sender.send(metrics_with(Ok(()))).unwrap();
            sender.send(metrics_with(state)).unwrap();
            assert_eq!(watcher.await.unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn a_failure_published_as_the_core_exits_is_still_seen() {
        let (sender, receiver) = watch::channel(metrics_with(Ok(())));
        sender.send(metrics_with(Err(Fatal::Panicked))).unwrap();
        drop(sender);
        assert_eq!(raft_failure(receiver).await, Some(Fatal::Panicked));

        let (sender, receiver) = watch::channel(metrics_with(Ok(())));
        drop(sender);
        assert_eq!(raft_failure(receiver).await, None);
    }
}
