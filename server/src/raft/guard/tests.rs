use openraft::{CommittedLeaderId, Entry, SnapshotMeta, StoredMembership};

use super::*;

fn members(ids: &[NodeId]) -> Local {
    Local {
        term: 7,
        members: Some(ids.iter().copied().collect()),
    }
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn append(
    term: u64,
    leader: NodeId,
    entries: Vec<Entry<TypeConfig>>,
) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(term, leader),
        prev_log_id: Some(log_id(6, 9)),
        entries,
        leader_commit: Some(log_id(6, 9)),
    }
}

/// A membership as a peer's bytes may carry it: `Membership::new` would add the missing
/// voters' nodes, so it is decoded from its wire form instead.
fn membership(voters: &[NodeId], nodes: &[NodeId]) -> Membership<NodeId, Member> {
    #[derive(serde::Serialize)]
    struct Wire {
        configs: Vec<BTreeSet<NodeId>>,
        nodes: std::collections::BTreeMap<NodeId, Member>,
    }
    let wire = Wire {
        configs: vec![voters.iter().copied().collect()],
        nodes: nodes.iter().map(|id| (*id, Member::default())).collect(),
    };
    postcard::from_bytes(&postcard::to_allocvec(&wire).unwrap()).unwrap()
}

fn snapshot(
    offset: u64,
    data: Vec<u8>,
    membership: Membership<NodeId, Member>,
) -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote: Vote::new_committed(8, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(8, 100)),
            last_membership: StoredMembership::new(Some(log_id(2, 1)), membership),
            snapshot_id: "8-1-100".into(),
        },
        offset,
        data,
        done: false,
    }
}

#[test]
fn a_members_plausible_messages_pass() {
    let local = members(&[1, 2, 3]);
    let entries = vec![blank(6, 10), blank(8, 11), blank(8, 12)];
    assert_eq!(
        check_append(&append(8, 1, entries), &local, Some(1)),
        Ok(())
    );
    let vote = VoteRequest::new(Vote::new(9, 2), Some(log_id(8, 12)));
    assert_eq!(check_vote(&vote, &local, Some(2)), Ok(()));
    let install = snapshot(4_096, vec![0; 16], membership(&[1, 2, 3], &[1, 2, 3]));
    assert_eq!(check_snapshot(&install, &local, None), Ok(()));
}

#[test]
fn a_term_near_overflow_is_refused_whatever_our_own() {
    let local = Local {
        term: u64::MAX - 1,
        members: None,
    };
    let refusal = check_append(&append(u64::MAX, 1, vec![]), &local, None).unwrap_err();
    assert!(
        matches!(refusal, Refusal::Implausible { what: "term", .. }),
        "{refusal:?}"
    );
    let vote = VoteRequest::new(Vote::new(TERM_MAX + 1, 1), None);
    assert!(check_vote(&vote, &local, None).is_err());
}

#[test]
fn a_term_jump_beyond_any_election_count_is_refused() {
    let local = members(&[1, 2, 3]);
    let furthest = local.term + TERM_JUMP_MAX;
    assert_eq!(
        check_append(&append(furthest, 1, vec![]), &local, None),
        Ok(())
    );
    let refusal = check_append(&append(furthest + 1, 1, vec![]), &local, None).unwrap_err();
    assert!(
        matches!(refusal, Refusal::Implausible { .. }),
        "{refusal:?}"
    );
}

#[test]
fn only_members_speak_once_there_is_a_membership() {
    let forged = append(8, 99, vec![]);
    let refusal = check_append(&forged, &members(&[1, 2, 3]), None).unwrap_err();
    assert_eq!(refusal, Refusal::NotMember { claimed: 99 });
    assert_eq!(
        tonic::Status::from(refusal).code(),
        tonic::Code::PermissionDenied
    );
    let vote = VoteRequest::new(Vote::new(9, 99), None);
    assert!(check_vote(&vote, &members(&[1, 2, 3]), None).is_err());
    let new_node = Local {
        term: 0,
        members: None,
    };
    assert_eq!(check_append(&forged, &new_node, None), Ok(()));
}

#[test]
fn a_peer_speaks_only_for_itself() {
    let local = members(&[1, 2, 3]);
    let refusal = check_append(&append(8, 1, vec![]), &local, Some(2)).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::Impersonation {
            peer: 2,
            claimed: 1
        }
    );
    let vote = VoteRequest::new(Vote::new(9, 3), None);
    assert!(check_vote(&vote, &local, Some(2)).is_err());
}

#[test]
fn entries_must_follow_one_another_within_the_leaders_term() {
    let local = members(&[1, 2, 3]);
    for entries in [
        vec![blank(8, 11)],               // a gap after entry 9
        vec![blank(8, 10), blank(8, 10)], // a repeat
        vec![blank(5, 10)],               // a term older than the previous entry's
        vec![blank(9, 10)],               // a term newer than the leader's
        vec![blank(8, INDEX_MAX + 1)],    // an index near overflow
    ] {
        let request = append(8, 1, entries.clone());
        assert!(
            check_append(&request, &local, None).is_err(),
            "{:?} accepted",
            entries.iter().map(|e| e.log_id).collect::<Vec<_>>()
        );
    }
    let mut ahead = append(8, 1, vec![]);
    ahead.leader_commit = Some(log_id(9, 9));
    assert!(check_append(&ahead, &local, None).is_err());
}

#[test]
fn a_membership_openraft_would_reject_is_refused() {
    let local = members(&[1, 2, 3]);
    let first = Entry {
        log_id: log_id(8, 10),
        payload: EntryPayload::Membership(membership(&[1, 4], &[1])),
    };
    let refusal = check_append(&append(8, 1, vec![first]), &local, None).unwrap_err();
    assert!(matches!(refusal, Refusal::Inconsistent(_)), "{refusal:?}");
    let empty = snapshot(0, vec![], membership(&[], &[]));
    assert!(check_snapshot(&empty, &local, None).is_err());
    let crowd: Vec<NodeId> = (1..=MEMBERS_MAX as u64 + 1).collect();
    let crowded = snapshot(0, vec![], membership(&crowd, &crowd));
    assert!(check_snapshot(&crowded, &local, None).is_err());
}

#[test]
fn a_snapshot_chunk_beyond_the_size_bound_is_refused() {
    let local = members(&[1, 2, 3]);
    let valid = membership(&[1, 2, 3], &[1, 2, 3]);
    let far = snapshot(u64::MAX - 2, vec![1, 2, 3, 4], valid.clone());
    assert!(check_snapshot(&far, &local, None).is_err());
    let just_over = snapshot(SNAPSHOT_BYTES_MAX - 1, vec![1, 2], valid.clone());
    assert!(check_snapshot(&just_over, &local, None).is_err());
    let last = snapshot(SNAPSHOT_BYTES_MAX - 2, vec![1, 2], valid);
    assert_eq!(check_snapshot(&last, &local, None), Ok(()));
}

#[test]
fn a_vote_for_a_log_from_the_future_is_refused() {
    let local = members(&[1, 2, 3]);
    let vote = VoteRequest::new(Vote::new(9, 2), Some(log_id(10, 12)));
    assert!(check_vote(&vote, &local, None).is_err());
}

#[test]
fn an_answer_with_an_absurd_vote_is_refused() {
    assert_eq!(
        check_answer(&Vote::new_committed(9, 2), Some(&log_id(9, 3))),
        Ok(())
    );
    assert!(check_answer(&Vote::new(u64::MAX, 2), None).is_err());
    assert!(check_answer(&Vote::new(9, 2), Some(&log_id(u64::MAX, 3))).is_err());
}
