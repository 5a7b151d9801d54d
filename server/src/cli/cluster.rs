//! The Raft group from the operator's side: every node's own view of it (`status`), and
//! membership changes (`cluster add-learner`, `cluster promote`, `cluster remove`).

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use tollgate_client::{v1, Applied, Client, ClientConfig, Error};

use super::ops::{out, out_json, Ops, Target, TOKEN_HINT};
use super::render::{self, chain_head_short, or_dash, Table};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Add a node as a non-voting learner; it starts receiving the log.
    AddLearner {
        #[arg(long, value_name = "N")]
        id: u64,
        /// Where clients reach the node (its --advertise).
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Where peers reach the node's peer listener (its --peer-advertise).
        #[arg(long, value_name = "HOST:PORT")]
        peer_addr: String,
    },
    /// Set the voting members to exactly these node ids (members or learners already).
    Promote {
        #[arg(long, value_name = "IDS", value_delimiter = ',', required = true)]
        voters: Vec<u64>,
    },
    /// Take a node out of the cluster (out of the voters, then out of the members).
    /// Refused for the last voter, and when the voters left would not answer as a quorum.
    Remove {
        #[arg(long, value_name = "N")]
        id: u64,
    },
}

/// Time one node's status may take, retries included: an unreachable node becomes a row
/// saying so after this long, not a hung command.
const STATUS_DEADLINE: Duration = Duration::from_secs(2);

/// Why a node gave no status, as a person can act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeFailure {
    /// The kind of failure, shown in the ROLE column: only a transport failure is
    /// `unreachable`; a node that refused the token did answer.
    label: &'static str,
    detail: String,
}

impl From<Error> for NodeFailure {
    fn from(error: Error) -> NodeFailure {
        let label = failure_label(&error);
        let detail = match error {
            // The client's words are about the whole cluster; here it is one node.
            Error::Unavailable { reason } => reason,
            other => other.to_string(),
        };
        NodeFailure { label, detail }
    }
}

/// The word for a failed status call. The client reports both UNAUTHENTICATED (no or an
/// unknown token) and PERMISSION_DENIED (a tenant's token) as `PermissionDenied`.
fn failure_label(error: &Error) -> &'static str {
    match error {
        Error::Unavailable { .. } => LABEL_UNREACHABLE,
        Error::PermissionDenied(_) => LABEL_PERMISSION_DENIED,
        Error::Invalid(_) => "invalid request",
        Error::NotFound(_) => "not found",
        Error::FailedPrecondition(_) => "failed precondition",
        Error::Exhausted(_) => "exhausted",
        Error::Internal(_) => "internal error",
        Error::Denied { .. }
        | Error::Frozen { .. }
        | Error::Tripped { .. }
        | Error::RequestIdReused(_) => "error",
    }
}

const LABEL_UNREACHABLE: &str = "unreachable";
const LABEL_PERMISSION_DENIED: &str = "permission denied";

/// One node's answer to `tollgate status`, or why there was none.
type NodeAnswer = (String, Result<v1::StatusResponse, NodeFailure>);

/// `tollgate status`; with `require_quorum`, an error unless some node answers that it is
/// in touch with a quorum.
pub async fn status(target: &Target, require_quorum: bool) -> anyhow::Result<()> {
    let config = ClientConfig {
        deadline: STATUS_DEADLINE,
        ..target.client_config()?
    };
    let addrs: Vec<String> = config.endpoints.clone();
    let client = Client::new(config).context("check --cluster (or TOLLGATE_CLUSTER)")?;
    // Ask every node at once: the command takes as long as the slowest node, not the sum.
    let tasks: Vec<_> = addrs
        .iter()
        .map(|addr| {
            let client = client.clone();
            let addr = addr.clone();
            tokio::spawn(async move { client.status(&addr).await })
        })
        .collect();
    let mut answers: Vec<NodeAnswer> = Vec::with_capacity(addrs.len());
    for (addr, task) in addrs.into_iter().zip(tasks) {
        let answer = match task.await {
            Ok(result) => result.map_err(NodeFailure::from),
            Err(join) => Err(NodeFailure {
                label: "error",
                detail: format!("status request failed: {join}"),
            }),
        };
        answers.push((addr, answer));
    }

    if target.json {
        out_json(&Value::Array(answers.iter().map(node_json).collect()))?;
    } else {
        out(&status_text(&answers))?;
    }
    if let Some(error) = no_answer_error(&answers, &target.hint_flags()) {
        return Err(error);
    }
    if require_quorum && !quorum_answered(&answers) {
        return Err(anyhow!(
            "no node is in touch with a quorum: writes cannot commit (see the QUORUM column)"
        ));
    }
    Ok(())
}

/// Whether some node answered that it is in touch with a quorum.
fn quorum_answered(answers: &[NodeAnswer]) -> bool {
    answers
        .iter()
        .any(|(_, answer)| answer.as_ref().is_ok_and(|s| s.quorum))
}

/// When no node gave its status: why, and what to try.
fn no_answer_error(answers: &[NodeAnswer], hint_flags: &str) -> Option<anyhow::Error> {
    let failures: Vec<&NodeFailure> = answers
        .iter()
        .map(|(_, answer)| answer.as_ref().err())
        .collect::<Option<_>>()?;
    let tried: Vec<&str> = answers.iter().map(|(addr, _)| addr.as_str()).collect();
    let tried = tried.join(", ");
    let error = if failures.iter().all(|f| f.label == LABEL_PERMISSION_DENIED) {
        anyhow!("every node refused the credentials ({tried})\nhint: {TOKEN_HINT}")
    } else if failures.iter().all(|f| f.label == LABEL_UNREACHABLE) {
        anyhow!(
            "no node answered ({tried}); check --cluster (or TOLLGATE_CLUSTER): \
             tollgate status {hint_flags}"
        )
    } else if failures.iter().any(|f| f.label == LABEL_PERMISSION_DENIED) {
        anyhow!("no node gave its status ({tried}); see the reasons above\nhint: {TOKEN_HINT}")
    } else {
        anyhow!("no node gave its status ({tried}); see the reasons above")
    };
    Some(error)
}

fn node_json((addr, answer): &NodeAnswer) -> Value {
    match answer {
        Ok(status) => {
            let mut json = render::status_json(addr, status);
            json["quorum"] = json!(status.quorum);
            json
        }
        Err(failure) => json!({
            "addr": addr,
            "reachable": failure.label != LABEL_UNREACHABLE,
            "failure": failure.label,
            "error": failure.detail,
        }),
    }
}

/// The status table, why nodes failed to answer, and the membership as the leader (or else
/// the first node that answered) sees it.
fn status_text(answers: &[NodeAnswer]) -> String {
    let mut table = Table::new(&[
        "NODE",
        "ADDR",
        "ROLE",
        "TERM",
        "LEADER",
        "COMMIT",
        "APPLIED",
        "LAST-LOG",
        "SNAPSHOT",
        "CHAIN-HEAD",
        "IN-FLIGHT",
        "QUORUM",
    ]);
    let mut notes = String::new();
    for (addr, answer) in answers {
        match answer {
            Ok(s) => table.row(vec![
                s.node_id.to_string(),
                addr.clone(),
                s.role.clone(),
                s.term.to_string(),
                or_dash(s.leader_id),
                s.commit_index.to_string(),
                s.applied_index.to_string(),
                s.last_log_index.to_string(),
                s.snapshot_index.to_string(),
                chain_head_short(s.chain_head_seq, &s.chain_head_hash),
                s.reservations_in_flight.to_string(),
                if s.quorum { "yes" } else { "no" }.to_owned(),
            ]),
            Err(failure) => {
                let mut row = vec!["-".to_owned(); 12];
                row[1] = addr.clone();
                row[2] = failure.label.to_owned();
                table.row(row);
                notes.push_str(&format!("{addr}: {}\n", failure.detail));
            }
        }
    }
    let mut text = table.render();
    let answered = answers
        .iter()
        .filter_map(|(_, answer)| answer.as_ref().ok());
    let viewer = answered
        .clone()
        .find(|s| s.leader_id == Some(s.node_id))
        .or_else(|| answered.clone().next());
    if let Some(viewer) = viewer {
        let members: Vec<String> = viewer
            .members
            .iter()
            .map(|m| {
                let role = if m.voter { "voter" } else { "learner" };
                format!("{} {} peers {} ({role})", m.node_id, m.addr, m.peer_addr)
            })
            .collect();
        text.push_str(&format!(
            "\nmembers (as node {} sees them): {}\n",
            viewer.node_id,
            members.join(", ")
        ));
    }
    let trails: Vec<String> = answered.map(render::trail_line).collect();
    if !trails.is_empty() {
        text.push_str(&format!("\naudit trail on disk:\n{}\n", trails.join("\n")));
    }
    if !notes.is_empty() {
        text.push('\n');
        text.push_str(&notes);
    }
    text
}

pub async fn membership(ops: &Ops, command: ClusterCommand) -> anyhow::Result<()> {
    let (response, message) = match command {
        ClusterCommand::AddLearner {
            id,
            addr,
            peer_addr,
        } => {
            let response = ops
                .client
                .add_learner(id, &addr, &peer_addr)
                .await
                .map_err(|e| {
                    let what = format!("could not add node {id} ({addr}, peers {peer_addr})");
                    ops.failed(format!("{what} as a learner"), e)
                })?;
            let message = format!("node {id} ({addr}, peers {peer_addr}) added as a learner");
            (response, message)
        }
        ClusterCommand::Promote { voters } => {
            let ids: Vec<String> = voters.iter().map(u64::to_string).collect();
            let ids = ids.join(",");
            let response = ops
                .client
                .change_membership(voters)
                .await
                .map_err(|e| ops.failed(format!("could not make the voters {ids}"), e))?;
            (response, format!("voters are now {ids}"))
        }
        ClusterCommand::Remove { id } => {
            let response = ops
                .client
                .remove_node(id)
                .await
                .map_err(|e| ops.failed(format!("could not remove node {id}"), e))?;
            (response, format!("node {id} removed"))
        }
    };
    let applied = Applied::from(response.applied);
    if ops.json {
        return out_json(&json!({
            "ok": true,
            "members": response.members.iter().map(render::member_json).collect::<Vec<_>>(),
            "applied": render::applied_json(applied),
        }));
    }
    let mut text = format!(
        "{message} (log index {}, term {})\n\n",
        applied.log_index, applied.term
    );
    text.push_str(&render::members_table(&response.members).render());
    out(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, role: &str, leader: Option<u64>) -> v1::StatusResponse {
        v1::StatusResponse {
            node_id: id,
            addr: format!("127.0.0.1:700{id}"),
            role: role.into(),
            term: 3,
            leader_id: leader,
            commit_index: 120,
            applied_index: 119,
            last_log_index: 120,
            members: vec![
                v1::Member {
                    node_id: 1,
                    addr: "127.0.0.1:7001".into(),
                    voter: true,
                    peer_addr: "127.0.0.1:7101".into(),
                },
                v1::Member {
                    node_id: 2,
                    addr: "127.0.0.1:7002".into(),
                    voter: false,
                    peer_addr: "127.0.0.1:7102".into(),
                },
            ],
            chain_head_seq: 57,
            chain_head_hash: vec![0x3f; 32],
            reservations_in_flight: 4,
            snapshot_index: 100,
            ..v1::StatusResponse::default()
        }
    }

    #[test]
    fn an_unreachable_node_is_a_row_not_a_failure() {
        let answers: Vec<NodeAnswer> = vec![
            ("127.0.0.1:7002".into(), Ok(node(2, "follower", Some(1)))),
            ("127.0.0.1:7001".into(), Ok(node(1, "leader", Some(1)))),
            (
                "127.0.0.1:7003".into(),
                Err(NodeFailure::from(Error::Unavailable {
                    reason: "connection refused".into(),
                })),
            ),
        ];
        let text = status_text(&answers);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NODE  ADDR            ROLE         TERM  LEADER"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("2     127.0.0.1:7002  follower     3     1"),
            "{text}"
        );
        assert!(lines[1].contains("57:3f3f3f3f3f3f"), "{text}");
        assert!(
            lines[3].starts_with("-     127.0.0.1:7003  unreachable  -"),
            "{text}"
        );
        assert!(
            text.contains("members (as node 1 sees them): 1 127.0.0.1:7001 peers 127.0.0.1:7101 (voter), 2 127.0.0.1:7002 peers 127.0.0.1:7102 (learner)"),
            "{text}"
        );
        assert!(
            text.ends_with("127.0.0.1:7003: connection refused\n"),
            "{text}"
        );
        assert_eq!(node_json(&answers[2])["reachable"], json!(false));
        assert_eq!(
            node_json(&answers[1])["chain_head_hash"],
            json!("3f".repeat(32))
        );
    }

    #[test]
    fn status_quorum_needs_a_node_that_has_one() {
        let with = |quorum: bool| v1::StatusResponse {
            quorum,
            ..node(1, "follower", None)
        };
        let down = Err(NodeFailure::from(Error::Unavailable {
            reason: "connection refused".into(),
        }));
        let lost: Vec<NodeAnswer> = vec![("a:1".into(), Ok(with(false))), ("b:2".into(), down)];
        assert!(!quorum_answered(&lost));
        assert!(status_text(&lost).lines().nth(1).unwrap().ends_with("no"));
        let kept: Vec<NodeAnswer> = vec![
            ("a:1".into(), Ok(with(false))),
            ("c:3".into(), Ok(with(true))),
        ];
        assert!(quorum_answered(&kept));
        assert_eq!(node_json(&kept[1])["quorum"], json!(true));
    }

    #[test]
    fn only_a_transport_failure_is_unreachable() {
        let cases = [
            (
                Error::Unavailable {
                    reason: "connection refused".into(),
                },
                "unreachable",
            ),
            (
                Error::PermissionDenied("unknown token".into()),
                "permission denied",
            ),
            (Error::Invalid("bad".into()), "invalid request"),
            (Error::Internal("boom".into()), "internal error"),
            (Error::NotFound("x".into()), "not found"),
        ];
        for (error, label) in cases {
            assert_eq!(failure_label(&error), label, "{error}");
        }
    }

    #[test]
    fn a_refused_token_is_a_row_saying_so_and_a_hint_without_the_token() {
        let refused = || {
            Err(NodeFailure::from(Error::PermissionDenied(
                "unknown token".into(),
            )))
        };
        let answers: Vec<NodeAnswer> = vec![
            ("127.0.0.1:7301".into(), refused()),
            ("127.0.0.1:7302".into(), refused()),
        ];
        let text = status_text(&answers);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("-     127.0.0.1:7301  permission denied  -"),
            "{text}"
        );
        assert!(
            text.contains("127.0.0.1:7302: permission denied: unknown token"),
            "{text}"
        );
        assert_eq!(node_json(&answers[0])["reachable"], json!(true));
        assert_eq!(
            node_json(&answers[0])["failure"],
            json!("permission denied")
        );
        let error = no_answer_error(&answers, "--cluster x")
            .unwrap()
            .to_string();
        assert!(error.contains("refused the credentials"), "{error}");
        assert!(error.contains("--api-key-file <PATH>"), "{error}");

        let down = |addr: &str| {
            let failure = NodeFailure::from(Error::Unavailable {
                reason: "connection refused".into(),
            });
            (addr.to_owned(), Err(failure))
        };
        let answers = vec![down("127.0.0.1:7301"), down("127.0.0.1:7302")];
        let flags = "--cluster 127.0.0.1:7301,127.0.0.1:7302";
        let error = no_answer_error(&answers, flags).unwrap().to_string();
        assert!(
            error.ends_with(&format!("tollgate status {flags}")),
            "{error}"
        );
        let mixed = vec![down("a:1"), ("b:2".into(), Ok(node(2, "leader", Some(2))))];
        assert!(no_answer_error(&mixed, flags).is_none());
    }
}
