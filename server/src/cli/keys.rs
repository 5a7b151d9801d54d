//! `tollgate key`: create, list, rotate and revoke API keys, and `key generate`, which
//! prints a fresh bootstrap admin key offline. A secret is printed once, by the command
//! that made it, and never otherwise.

use clap::Subcommand;
use serde_json::json;
use tollgate_client::v1;

use super::ops::{out, out_json, Ops, UsageError};
use super::render::{render_fields, Table};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key and print it, once.
    ///   tollgate key create --tenant acme --role worker --agent support-bot --name "support workers"
    Create {
        /// The key's tenant; omit it for an admin key.
        #[arg(long)]
        tenant: Option<String>,
        /// admin, tenant-admin or worker.
        #[arg(long)]
        role: String,
        /// Worker keys: an agent the key may act as (repeat; none: any agent).
        #[arg(long = "agent", value_name = "AGENT")]
        agents: Vec<String>,
        /// A label for people.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (revoked ones too), never their secrets.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Give a key a new secret and print it, once; the old secret stops working.
    Rotate {
        /// The key id (the part after `tg_`, before the second `_`).
        key_id: String,
    },
    /// Revoke a key for good.
    Revoke { key_id: String },
    /// Print a fresh bootstrap admin key (offline) for --admin-key-file.
    Generate,
}

fn role(name: &str) -> Result<v1::KeyRole, UsageError> {
    match name {
        "admin" => Ok(v1::KeyRole::Admin),
        "tenant-admin" => Ok(v1::KeyRole::TenantAdmin),
        "worker" => Ok(v1::KeyRole::Worker),
        other => Err(UsageError(format!(
            "--role {other:?}: expected admin, tenant-admin or worker"
        ))),
    }
}

fn role_name(role: i32) -> &'static str {
    match v1::KeyRole::try_from(role) {
        Ok(v1::KeyRole::Admin) => "admin",
        Ok(v1::KeyRole::TenantAdmin) => "tenant-admin",
        Ok(v1::KeyRole::Worker) => "worker",
        _ => "unknown",
    }
}

fn key_json(key: &v1::Key) -> serde_json::Value {
    json!({
        "key_id": key.key_id,
        "tenant": (!key.tenant.is_empty()).then_some(&key.tenant),
        "role": role_name(key.role),
        "agents": key.agents,
        "name": key.name,
        "created_at_ms": key.created_at_ms,
        "rotated_at_ms": key.rotated_at_ms,
        "revoked_at_ms": key.revoked_at_ms,
    })
}

/// Prints a key with its secret, and says it is shown once.
fn print_secret(ops: &Ops, response: &v1::KeySecretResponse) -> anyhow::Result<()> {
    let key = response.key.clone().unwrap_or_default();
    if ops.json {
        return out_json(&json!({ "key": key_json(&key), "api_key": response.api_key }));
    }
    let mut text = render_fields(&[
        ("key id", key.key_id.clone()),
        ("tenant", key.tenant.clone()),
        ("role", role_name(key.role).to_owned()),
        ("agents", key.agents.join(",")),
        ("api key", response.api_key.clone()),
    ]);
    text.push_str(
        "\nthe api key is shown this once: store it now (e.g. in a file for --api-key-file)\n",
    );
    out(&text)
}

pub async fn key(ops: &Ops, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create {
            tenant,
            role: role_arg,
            agents,
            name,
        } => {
            let role = role(&role_arg)?;
            let response = ops
                .client
                .create_key(tenant.as_deref(), role, &agents, &name)
                .await
                .map_err(|e| ops.failed(format!("could not create a {role_arg} key"), e))?;
            print_secret(ops, &response)
        }
        KeyCommand::List { tenant } => {
            let keys = ops
                .client
                .list_keys(tenant.as_deref())
                .await
                .map_err(|e| ops.failed("could not list keys", e))?;
            if ops.json {
                return out_json(&json!(keys.iter().map(key_json).collect::<Vec<_>>()));
            }
            let mut table = Table::new(&["KEY ID", "TENANT", "ROLE", "AGENTS", "NAME", "STATE"]);
            for key in &keys {
                let state = match key.revoked_at_ms {
                    Some(at_ms) => format!("revoked at {at_ms} ms"),
                    None => "live".to_owned(),
                };
                table.row(vec![
                    key.key_id.clone(),
                    key.tenant.clone(),
                    role_name(key.role).to_owned(),
                    key.agents.join(","),
                    key.name.clone(),
                    state,
                ]);
            }
            out(&table.render())
        }
        KeyCommand::Rotate { key_id } => {
            let response = ops
                .client
                .rotate_key(&key_id)
                .await
                .map_err(|e| ops.failed(format!("could not rotate key {key_id}"), e))?;
            print_secret(ops, &response)
        }
        KeyCommand::Revoke { key_id } => {
            let applied = ops
                .client
                .revoke_key(&key_id)
                .await
                .map_err(|e| ops.failed(format!("could not revoke key {key_id}"), e))?;
            ops.applied(&format!("key {key_id} revoked"), applied)
        }
        KeyCommand::Generate => generate(),
    }
}

/// `tollgate key generate`: offline, so it runs before any client is built.
pub fn generate() -> anyhow::Result<()> {
    out(&format!("{}\n", crate::auth::new_bootstrap_key()))
}
