//! The Raft group from the operator's side: every node's own view of it (`status`), and
//! membership changes (`cluster add-learner`, `cluster promote`).

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tollgate_client::{v1, Applied, Client, ClientConfig};

use super::render::{self, chain_head_short, or_dash, Table};
use super::{failed, out, out_json, ClusterCommand, Ops, Target};

/// Time one node's status may take, retries included: an unreachable node becomes a row
/// saying so after this long, not a hung command.
const STATUS_DEADLINE: Duration = Duration::from_secs(2);

/// One node's answer to `Cluster.Status`, or why there was none.
type NodeAnswer = (String, Result<v1::StatusResponse, String>);

pub async fn status(target: &Target) -> anyhow::Result<()> {
    let config = ClientConfig {
        deadline: STATUS_DEADLINE,
        ..target.client_config()
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
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(join) => Err(format!("status request failed: {join}")),
        };
        answers.push((addr, answer));
    }

    if target.json {
        out_json(&Value::Array(answers.iter().map(node_json).collect()))?;
    } else {
        out(&status_text(&answers))?;
    }
    if answers.iter().all(|(_, answer)| answer.is_err()) {
        let tried: Vec<&str> = answers.iter().map(|(addr, _)| addr.as_str()).collect();
        bail!(
            "no node answered ({}); check --cluster (or TOLLGATE_CLUSTER) and --token",
            tried.join(", ")
        );
    }
    Ok(())
}

fn node_json((addr, answer): &NodeAnswer) -> Value {
    match answer {
        Ok(status) => render::status_json(addr, status),
        Err(error) => json!({ "addr": addr, "reachable": false, "error": error }),
    }
}

/// The status table, why unreachable nodes are, and the membership as the leader (or else
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
            ]),
            Err(error) => {
                let mut row = vec!["-".to_owned(); 11];
                row[1] = addr.clone();
                row[2] = "unreachable".into();
                table.row(row);
                notes.push_str(&format!("{addr}: {error}\n"));
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
                format!("{} {} ({role})", m.node_id, m.addr)
            })
            .collect();
        text.push_str(&format!(
            "\nmembers (as node {} sees them): {}\n",
            viewer.node_id,
            members.join(", ")
        ));
    }
    if !notes.is_empty() {
        text.push('\n');
        text.push_str(&notes);
    }
    text
}

pub async fn membership(ops: &Ops, command: ClusterCommand) -> anyhow::Result<()> {
    let (response, message) = match command {
        ClusterCommand::AddLearner { id, addr } => {
            let response =
                ops.client.add_learner(id, &addr).await.map_err(|e| {
                    failed(format!("could not add node {id} ({addr}) as a learner"), e)
                })?;
            (response, format!("node {id} ({addr}) added as a learner"))
        }
        ClusterCommand::Promote { voters } => {
            let ids: Vec<String> = voters.iter().map(u64::to_string).collect();
            let ids = ids.join(",");
            let response = ops
                .client
                .change_membership(voters)
                .await
                .map_err(|e| failed(format!("could not make the voters {ids}"), e))?;
            (response, format!("voters are now {ids}"))
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
                },
                v1::Member {
                    node_id: 2,
                    addr: "127.0.0.1:7002".into(),
                    voter: false,
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
            ("127.0.0.1:7003".into(), Err("connection refused".into())),
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
            text.contains("members (as node 1 sees them): 1 127.0.0.1:7001 (voter), 2 127.0.0.1:7002 (learner)"),
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
}
