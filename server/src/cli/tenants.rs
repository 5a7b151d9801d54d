//! Tenants, limits, the kill switch, and the tenant-facing reads (usage, reservations).

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::ops::{out, out_json, Ops, UsageError};
use super::parse::{parse_scope, DimensionArg, LimitKindArgs, TenantPolicyArgs};
use super::render::{self, render_fields};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant, or change its policy. Flags left out keep the defaults.
    Put {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        policy: TenantPolicyArgs,
    },
    /// A tenant's policy and limits.
    Get {
        /// The tenant's name.
        name: String,
    },
    /// Every tenant.
    List,
}

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Set a limit: create it, or replace the limit with the same id.
    ///
    /// Give exactly one kind: --budget AMOUNT [--window W], --rate AMOUNT --per DURATION
    /// [--burst AMOUNT], or --concurrency N. A cost AMOUNT is money: 50usd, 5.25usd, $5,
    /// 5 USD (at most 6 decimals); a bare integer is a count, and for cost micro-units
    /// (50000000 = $50).
    ///
    /// Examples:
    ///   tollgate limit put --tenant acme --id daily-usd --scope tenant --dimension cost --budget 50usd --window day
    ///   tollgate limit put --tenant acme --id tpm --scope tool:llm:gpt-x --dimension tokens --rate 100000 --per 1m
    ///   tollgate limit put --tenant acme --id parallel --scope each-agent --concurrency 8
    #[command(verbatim_doc_comment)]
    Put {
        #[arg(long)]
        tenant: String,
        /// The limit's id, unique within the tenant.
        #[arg(long)]
        id: String,
        /// tenant | each-agent | agent:NAME | tool:NAME (each agent separately) |
        /// tool-tenant:NAME (summed over the tenant).
        #[arg(long, value_parser = parse_scope)]
        scope: tollgate_client::v1::Scope,
        /// What the limit counts. Optional with --concurrency, which counts concurrency.
        #[arg(long, value_enum, required_unless_present = "concurrency")]
        dimension: Option<DimensionArg>,
        #[command(flatten)]
        kind: LimitKindArgs,
        /// Soft thresholds of a budget, in percent: `50,80,95` (the default), or `off`.
        /// Committed spend crossing one is audited (`threshold_crossed`) and alerted.
        #[arg(long, value_name = "PERCENTS", value_parser = parse_thresholds)]
        thresholds: Option<tollgate_client::v1::AlertThresholds>,
    },
    /// Remove a limit.
    Delete {
        #[arg(long)]
        tenant: String,
        /// The limit's id.
        #[arg(long)]
        id: String,
    },
    /// The limits in force for a tenant.
    List {
        #[arg(long)]
        tenant: String,
    },
}

/// `--thresholds`: percents separated by commas, or `off` for none. The cluster checks
/// the values (1 to 99, ascending, at most 8).
fn parse_thresholds(text: &str) -> Result<tollgate_client::v1::AlertThresholds, String> {
    let percent = match text.trim() {
        "off" | "none" => Vec::new(),
        text => text
            .split(',')
            .map(|p| p.trim().trim_end_matches('%').parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{text:?} is not percents like 50,80,95 (or off)"))?,
    };
    Ok(tollgate_client::v1::AlertThresholds { percent })
}

#[derive(Debug, Args)]
pub struct FreezeArgs {
    #[arg(long)]
    pub tenant: String,
    /// Only this agent; without it, the whole tenant.
    #[arg(long)]
    pub agent: Option<String>,
}

pub async fn tenant(ops: &Ops, command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Put { name, policy } => {
            let policy = policy.to_wire().map_err(UsageError)?;
            let applied = ops
                .client
                .put_tenant(&name, policy)
                .await
                .map_err(|e| ops.failed(format!("could not put tenant {name:?}"), e))?;
            ops.applied(&format!("tenant {name:?} put"), applied)
        }
        TenantCommand::Get { name } => {
            let response = ops
                .client
                .get_tenant(&name)
                .await
                .map_err(|e| ops.failed(format!("could not get tenant {name:?}"), e))?;
            let policy = response.policy.unwrap_or_default();
            if ops.json {
                return out_json(&json!({
                    "tenant": name,
                    "policy": render::policy_json(&policy),
                    "limits": response.limits.iter().map(render::limit_json).collect::<Vec<_>>(),
                }));
            }
            let mut fields = vec![("tenant", name.clone())];
            fields.extend(render::policy_fields(&policy));
            let mut text = render_fields(&fields);
            text.push('\n');
            if response.limits.is_empty() {
                text.push_str("no limits: every reservation is granted\n");
            } else {
                text.push_str(&render::limits_table(&response.limits).render());
            }
            out(&text)
        }
        TenantCommand::List => {
            let tenants = ops
                .client
                .list_tenants()
                .await
                .map_err(|e| ops.failed("could not list tenants", e))?;
            if ops.json {
                return out_json(&json!(tenants));
            }
            let mut table = render::Table::new(&["TENANT"]);
            for tenant in tenants {
                table.row(vec![tenant]);
            }
            out(&table.render())
        }
    }
}

pub async fn limit(ops: &Ops, command: LimitCommand) -> anyhow::Result<()> {
    match command {
        LimitCommand::Put {
            tenant,
            id,
            scope,
            dimension,
            kind,
            thresholds,
        } => {
            // clap checked which flags go together; what needs the dimension is checked
            // here, before anything is sent.
            let (kind, dimension) = kind.to_wire(dimension).map_err(UsageError)?;
            let limit = tollgate_client::v1::Limit {
                id: id.clone(),
                scope: Some(scope),
                dimension: dimension.into(),
                kind: Some(kind),
                thresholds,
            };
            let applied = ops.client.put_limit(&tenant, limit).await.map_err(|e| {
                ops.failed(
                    format!("could not put limit {id:?} of tenant {tenant:?}"),
                    e,
                )
            })?;
            ops.applied(&format!("limit {id:?} of tenant {tenant:?} put"), applied)
        }
        LimitCommand::Delete { tenant, id } => {
            let applied = ops.client.delete_limit(&tenant, &id).await.map_err(|e| {
                ops.failed(
                    format!("could not delete limit {id:?} of tenant {tenant:?}"),
                    e,
                )
            })?;
            ops.applied(
                &format!("limit {id:?} of tenant {tenant:?} deleted"),
                applied,
            )
        }
        LimitCommand::List { tenant } => {
            let limits = ops.client.list_limits(&tenant).await.map_err(|e| {
                ops.failed(format!("could not list the limits of tenant {tenant:?}"), e)
            })?;
            if ops.json {
                return out_json(&Value::Array(
                    limits.iter().map(render::limit_json).collect(),
                ));
            }
            if limits.is_empty() {
                return out(&format!("tenant {tenant:?} has no limits\n"));
            }
            out(&render::limits_table(&limits).render())
        }
    }
}

pub async fn freeze(ops: &Ops, args: FreezeArgs, frozen: bool) -> anyhow::Result<()> {
    let FreezeArgs { tenant, agent } = args;
    let who = match &agent {
        Some(agent) => format!("agent {agent:?} of tenant {tenant:?}"),
        None => format!("tenant {tenant:?}"),
    };
    let (verb, done) = if frozen {
        ("freeze", "frozen")
    } else {
        ("unfreeze", "unfrozen")
    };
    let result = if frozen {
        ops.client.freeze(&tenant, agent.as_deref()).await
    } else {
        ops.client.unfreeze(&tenant, agent.as_deref()).await
    };
    let applied = result.map_err(|e| ops.failed(format!("could not {verb} {who}"), e))?;
    ops.applied(&format!("{who} {done}"), applied)
}

pub async fn reset_trip(ops: &Ops, tenant: &str, agent: &str) -> anyhow::Result<()> {
    let who = format!("agent {agent:?} of tenant {tenant:?}");
    let applied = ops
        .client
        .reset_trip(tenant, agent)
        .await
        .map_err(|e| ops.failed(format!("could not reset the trip of {who}"), e))?;
    ops.applied(&format!("trip of {who} reset"), applied)
}

pub async fn usage(
    ops: &Ops,
    tenant: &str,
    (agent, tool, session): (Option<&str>, Option<&str>, Option<&str>),
) -> anyhow::Result<()> {
    let failed = |e| ops.failed(format!("could not get the usage of tenant {tenant:?}"), e);
    let mut response = ops
        .client
        .usage(tenant, agent, tool)
        .await
        .map_err(failed)?;
    if let Some(session) = session {
        let rows = ops.client.session_usage(tenant, session).await;
        response.usage.extend(rows.map_err(failed)?.usage);
    }
    if ops.json {
        let mut value = json!({
            "tenant": tenant,
            "usage": response.usage.iter().map(render::usage_json).collect::<Vec<_>>(),
        });
        if let (Some(agent), Some(object)) = (agent, value.as_object_mut()) {
            object.insert(
                "agent".into(),
                json!({
                    "name": agent,
                    "frozen": response.agent_frozen,
                    "tripped": response.agent_tripped.as_ref().map(render::tripped_json),
                }),
            );
        }
        return out_json(&value);
    }
    let mut text = if response.usage.is_empty() {
        "no limits apply\n".to_owned()
    } else {
        render::usage_table(&response.usage).render()
    };
    if let Some(agent) = agent {
        let tripped = response
            .agent_tripped
            .as_ref()
            .map_or_else(|| "no".to_owned(), render::describe_trip);
        let frozen = if response.agent_frozen { "yes" } else { "no" };
        text.push_str(&format!(
            "\nagent {agent:?}: frozen: {frozen}; tripped: {tripped}\n"
        ));
    }
    out(&text)
}

pub async fn reservations(
    ops: &Ops,
    tenant: &str,
    agent: Option<&str>,
    limit: u32,
) -> anyhow::Result<()> {
    let reservations = ops
        .client
        .reservations(tenant, agent, limit)
        .await
        .map_err(|e| {
            ops.failed(
                format!("could not list the reservations of tenant {tenant:?}"),
                e,
            )
        })?;
    if ops.json {
        return out_json(&Value::Array(
            reservations.iter().map(render::reservation_json).collect(),
        ));
    }
    if reservations.is_empty() {
        return out("no reservations in flight\n");
    }
    let mut text = render::reservations_table(&reservations).render();
    if limit > 0 && u32::try_from(reservations.len()).is_ok_and(|shown| shown >= limit) {
        text.push_str(&format!(
            "(the oldest {}; there may be more: raise --limit)\n",
            reservations.len()
        ));
    }
    out(&text)
}
