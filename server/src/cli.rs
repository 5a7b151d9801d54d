//! The operator subcommands of `tollgate`, in the manner of `etcdctl`: each is one or a
//! few calls through `tollgate_client`, printed as an aligned table for people or as JSON
//! (`--json`) for scripts. Decides nothing: the cluster validates and answers, this module
//! only parses flags, calls and prints.

mod audit;
mod cluster;
mod money;
mod parse;
mod render;
mod tenants;

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tollgate_client::{Applied, Client, ClientConfig, Error};

use parse::{
    parse_query_limit, parse_scope, parse_time_ms, DimensionArg, LimitKindArgs, TenantPolicyArgs,
};

/// Time `tollgate health` may take, connect included: a container health check must not
/// hang.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default number of rows of `audit query` and `reservations`.
pub const ROWS_DEFAULT: u32 = 100;

/// Which cluster to talk to, with which credentials, and how to print.
#[derive(Clone, Debug, Args)]
pub struct Target {
    /// Cluster nodes, comma separated host:port (any node will do; followers point to the
    /// leader).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOLLGATE_CLUSTER",
        value_name = "ADDRS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub cluster: Vec<String>,
    /// The admin token (tenant commands accept a tenant's token).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "TOLLGATE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print JSON instead of tables (audit export always writes JSON lines).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
}

impl Target {
    fn client_config(&self) -> ClientConfig {
        let endpoints = self
            .cluster
            .iter()
            .map(|addr| addr.trim())
            .filter(|addr| !addr.is_empty());
        ClientConfig {
            token: self.token.clone().filter(|token| !token.is_empty()),
            ..ClientConfig::new(endpoints)
        }
    }

    fn client(&self) -> anyhow::Result<Client> {
        Client::new(self.client_config()).context("check --cluster (or TOLLGATE_CLUSTER)")
    }

    /// The connection flags to repeat in a suggested command: the cluster this command
    /// used, and the token's flag without its value.
    fn hint_flags(&self) -> String {
        let mut flags = format!("--cluster {}", self.client_config().endpoints.join(","));
        if self.token.as_deref().is_some_and(|token| !token.is_empty()) {
            flags.push_str(" --token <TOKEN>");
        }
        flags
    }
}

/// A mistake in the flags that only shows once they are read together (money given for
/// a count, say): reported like clap's own usage errors, with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Operator subcommands. Amounts of tokens and calls are counts; cost is money (`5usd`,
/// `$5.25`, `5 USD`) or a bare integer of micro-units (1 USD = 1_000_000).
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Raft status of every node in --cluster (role, term, indexes, audit chain head).
    Status,
    /// Create, show and list tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Set, delete and list a tenant's limits.
    #[command(subcommand)]
    Limit(LimitCommand),
    /// Kill switch: deny every new reservation of a tenant, or of one agent, at once.
    Freeze(FreezeArgs),
    /// Lift a freeze of a tenant or of one agent.
    Unfreeze(FreezeArgs),
    /// Let an agent tripped by runaway detection through again.
    ResetTrip {
        #[arg(long)]
        tenant: String,
        /// The tripped agent.
        #[arg(long)]
        agent: String,
    },
    /// Usage and remaining of the limits that apply to a tenant, an agent, a tool.
    Usage {
        #[arg(long)]
        tenant: String,
        /// Every limit that applies to this agent, with its counters, frozen and tripped.
        #[arg(long)]
        agent: Option<String>,
        /// Only the limits that apply to this tool.
        #[arg(long)]
        tool: Option<String>,
    },
    /// Reservations in flight, oldest first.
    Reservations {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        agent: Option<String>,
        /// Most reservations to show.
        #[arg(long, value_name = "N", default_value_t = ROWS_DEFAULT)]
        limit: u32,
    },
    /// Query, export and verify the hash-chained audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Change the Raft membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

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

#[derive(Debug, Args)]
pub struct FreezeArgs {
    #[arg(long)]
    pub tenant: String,
    /// Only this agent; without it, the whole tenant.
    #[arg(long)]
    pub agent: Option<String>,
}

/// Which audit records: by tenant, agent and time (RFC 3339, a date, or unix ms).
#[derive(Debug, Default, Args)]
pub struct AuditFilterArgs {
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub agent: Option<String>,
    /// From this time on (inclusive): 2024-05-01T12:00:00Z, 2024-05-01, or unix ms.
    #[arg(long = "from", value_name = "TIME", value_parser = parse_time_ms)]
    pub from_ms: Option<u64>,
    /// Up to this time.
    #[arg(long = "to", value_name = "TIME", value_parser = parse_time_ms)]
    pub to_ms: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit records as a table, oldest first.
    Query {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Only records after this sequence number (to page on).
        #[arg(long, value_name = "SEQ")]
        after_seq: Option<u64>,
        /// Most records to show (at most 10000; page on with --after-seq).
        #[arg(long, value_name = "N", default_value_t = ROWS_DEFAULT, value_parser = parse_query_limit)]
        limit: u32,
    },
    /// Every retained record as JSON lines, oldest first. Verify with `audit verify
    /// --file` only an export without --tenant/--agent: a filtered one does not chain.
    Export {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Write to this file (complete or not at all) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Check the hash chain: the cluster's (on the leader), or an exported file's.
    Verify {
        /// A JSON-lines file written by `audit export` (unfiltered by tenant and agent).
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Add a node as a non-voting learner; it starts receiving the log.
    AddLearner {
        #[arg(long, value_name = "N")]
        id: u64,
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
    },
    /// Set the voting members to exactly these node ids (members or learners already).
    Promote {
        #[arg(long, value_name = "IDS", value_delimiter = ',', required = true)]
        voters: Vec<u64>,
    },
}

/// What every handler needs: the client, how to print, and the flags hints repeat.
struct Ops {
    client: Client,
    json: bool,
    hint_flags: String,
}

/// Runs one operator subcommand against the cluster of `target`. A [`UsageError`] ends
/// the process as clap's do: the message on stderr, exit code 2.
pub async fn run(target: Target, command: OpsCommand) -> anyhow::Result<()> {
    let result = dispatch(target, command).await;
    if let Some(usage) = result
        .as_ref()
        .err()
        .and_then(|error| error.downcast_ref::<UsageError>())
    {
        clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!("{usage}\n"),
        )
        .exit();
    }
    result
}

async fn dispatch(target: Target, command: OpsCommand) -> anyhow::Result<()> {
    // Offline: needs no cluster, so a missing or bad --cluster must not stop it.
    if let OpsCommand::Audit(AuditCommand::Verify { file: Some(file) }) = &command {
        return audit::verify_file(target.json, file);
    }
    let ops = Ops {
        client: target.client()?,
        json: target.json,
        hint_flags: target.hint_flags(),
    };
    match command {
        OpsCommand::Status => cluster::status(&target).await,
        OpsCommand::Tenant(command) => tenants::tenant(&ops, command).await,
        OpsCommand::Limit(command) => tenants::limit(&ops, command).await,
        OpsCommand::Freeze(args) => tenants::freeze(&ops, args, true).await,
        OpsCommand::Unfreeze(args) => tenants::freeze(&ops, args, false).await,
        OpsCommand::ResetTrip { tenant, agent } => tenants::reset_trip(&ops, &tenant, &agent).await,
        OpsCommand::Usage {
            tenant,
            agent,
            tool,
        } => tenants::usage(&ops, &tenant, agent.as_deref(), tool.as_deref()).await,
        OpsCommand::Reservations {
            tenant,
            agent,
            limit,
        } => tenants::reservations(&ops, &tenant, agent.as_deref(), limit).await,
        OpsCommand::Audit(command) => audit::audit(&ops, command).await,
        OpsCommand::Cluster(command) => cluster::membership(&ops, command).await,
    }
}

/// gRPC health check (`grpc.health.v1`) of the node at `addr`: `Ok` if it is serving,
/// an error saying why not otherwise, all within [`HEALTH_TIMEOUT`].
pub async fn health(addr: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let uri = tollgate_client::normalise_endpoint(addr).map_err(|e| anyhow!("{e}"))?;
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(uri)?
            .connect_timeout(HEALTH_TIMEOUT)
            .timeout(HEALTH_TIMEOUT)
            .connect()
            .await?;
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let response = HealthClient::new(channel).check(request).await?;
        anyhow::Ok(response.into_inner().status)
    };
    let status = tokio::time::timeout(HEALTH_TIMEOUT, check)
        .await
        .map_err(|_| {
            anyhow!(
                "node {addr}: no health answer within {} ms",
                HEALTH_TIMEOUT.as_millis()
            )
        })?
        .with_context(|| format!("node {addr}: health check failed"))?;
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => {
            out(&format!("{addr}: serving\n"))?;
            Ok(())
        }
        Ok(other) => Err(anyhow!(
            "node {addr} is not serving: {}",
            other.as_str_name()
        )),
        Err(_) => Err(anyhow!(
            "node {addr} answered an unknown health status {status}"
        )),
    }
}

/// The hint that passes credentials.
const TOKEN_HINT: &str =
    "pass the admin token with --token <TOKEN> or the TOLLGATE_TOKEN environment variable";

/// A failed call as a person can act on it: what was attempted, why it failed, and for
/// the usual causes what to do, with `hint_flags` (see [`Target::hint_flags`]) in a
/// suggested command.
fn failed(hint_flags: &str, what: impl std::fmt::Display, error: Error) -> anyhow::Error {
    let hint = match &error {
        Error::PermissionDenied(_) => Some(TOKEN_HINT.to_owned()),
        Error::Unavailable { .. } => Some(format!(
            "check --cluster (or TOLLGATE_CLUSTER) and that a majority of nodes is up: \
             tollgate status {hint_flags}"
        )),
        _ => None,
    };
    match hint {
        Some(hint) => anyhow!("{what}: {error}\nhint: {hint}"),
        None => anyhow!("{what}: {error}"),
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("could not write to stdout")
        }
        _ => Ok(()),
    }
}

fn out_json(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("could not encode JSON")?;
    text.push('\n');
    out(&text)
}

impl Ops {
    /// [`failed`] with the flags of this command.
    fn failed(&self, what: impl std::fmt::Display, error: Error) -> anyhow::Error {
        failed(&self.hint_flags, what, error)
    }

    /// Reports a mutation: `message` and where it landed in the log, or JSON.
    fn applied(&self, message: &str, applied: Applied) -> anyhow::Result<()> {
        if self.json {
            out_json(&json!({ "ok": true, "applied": render::applied_json(applied) }))
        } else {
            out(&format!(
                "{message} (log index {}, term {})\n",
                applied.log_index, applied.term
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The shape main.rs gives the binary: `Target` flattened, `OpsCommand` flattened into
    /// the subcommands next to others.
    #[derive(Debug, Parser)]
    #[command(name = "tollgate")]
    struct Cli {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        Health,
        #[command(flatten)]
        Ops(OpsCommand),
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tollgate").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_default_cluster_is_three_local_nodes() {
        if std::env::var_os("TOLLGATE_CLUSTER").is_some() {
            return; // The environment chooses the cluster; the default does not apply.
        }
        let cli = parse(&["status"]).unwrap();
        assert_eq!(
            cli.target.cluster,
            ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
        );
        assert!(!cli.target.json);
    }

    #[test]
    fn global_flags_go_anywhere_and_cluster_is_split_on_commas() {
        let cli = parse(&[
            "limit",
            "list",
            "--tenant",
            "acme",
            "--json",
            "--cluster",
            "a:1,b:2",
        ])
        .unwrap();
        assert!(cli.target.json);
        assert_eq!(cli.target.cluster, ["a:1", "b:2"]);
        let cli = parse(&["--token", "t", "status"]).unwrap();
        assert_eq!(cli.target.token.as_deref(), Some("t"));
        assert!(matches!(cli.command, Top::Ops(OpsCommand::Status)));
    }

    #[test]
    fn limit_put_reads_scope_duration_and_kind() {
        let cli = parse(&[
            "limit",
            "put",
            "--tenant",
            "acme",
            "--id",
            "tpm",
            "--scope",
            "tool:llm:gpt-x",
            "--dimension",
            "tokens",
            "--rate",
            "100000",
            "--per",
            "1m",
            "--burst",
            "5000",
        ])
        .unwrap();
        let Top::Ops(OpsCommand::Limit(LimitCommand::Put {
            scope,
            dimension,
            kind,
            ..
        })) = cli.command
        else {
            panic!("not limit put");
        };
        assert_eq!(
            scope.scope,
            Some(tollgate_client::v1::scope::Scope::ToolPerAgent(
                "llm:gpt-x".into()
            ))
        );
        assert_eq!(dimension, Some(DimensionArg::Tokens));
        assert_eq!(kind.per_ms, Some(60_000));
        assert_eq!(kind.burst, Some(money::AmountArg::Bare(5_000)));
        assert!(parse(&["limit", "put", "--tenant", "a", "--id", "x", "--scope", "nope"]).is_err());
        assert!(parse(&[
            "limit", "put", "--tenant", "a", "--id", "x", "--scope", "tenant", "--per", "soon"
        ])
        .is_err());
    }

    #[test]
    fn tenant_put_without_flags_sends_no_policy() {
        let cli = parse(&["tenant", "put", "acme"]).unwrap();
        let Top::Ops(OpsCommand::Tenant(TenantCommand::Put { name, policy })) = cli.command else {
            panic!("not tenant put");
        };
        assert_eq!(name, "acme");
        assert_eq!(policy.to_wire(), Ok(None));
        let cli = parse(&[
            "tenant",
            "put",
            "acme",
            "--repeat-window",
            "30s",
            "--expiry",
            "release",
        ])
        .unwrap();
        let Top::Ops(OpsCommand::Tenant(TenantCommand::Put { policy, .. })) = cli.command else {
            panic!("not tenant put");
        };
        let policy = policy.to_wire().unwrap().unwrap();
        assert_eq!(policy.repeat_window_ms, 30_000);
        assert_eq!(policy.repeat_max, 20);
    }

    #[test]
    fn audit_and_cluster_flags_parse() {
        let cli = parse(&[
            "audit",
            "query",
            "--from",
            "2024-05-01",
            "--to",
            "1714564800000",
        ])
        .unwrap();
        let Top::Ops(OpsCommand::Audit(AuditCommand::Query { filter, limit, .. })) = cli.command
        else {
            panic!("not audit query");
        };
        assert_eq!(filter.from_ms, Some(1_714_521_600_000));
        assert_eq!(filter.to_ms, Some(1_714_564_800_000));
        assert_eq!(limit, ROWS_DEFAULT);
        let cli = parse(&["cluster", "promote", "--voters", "1,2,3,4"]).unwrap();
        let Top::Ops(OpsCommand::Cluster(ClusterCommand::Promote { voters })) = cli.command else {
            panic!("not cluster promote");
        };
        assert_eq!(voters, [1, 2, 3, 4]);
        assert!(parse(&["cluster", "promote"]).is_err());
    }

    #[test]
    fn an_empty_token_is_no_token() {
        let target = Target {
            cluster: vec!["a:1".into(), " b:2".into(), String::new()],
            token: Some(String::new()),
            json: false,
        };
        let config = target.client_config();
        assert_eq!(config.token, None);
        assert_eq!(config.endpoints, ["a:1", "b:2"]);
    }

    #[test]
    fn failures_name_what_failed_and_hint_at_the_fix() {
        let flags = "--cluster 127.0.0.1:7301,127.0.0.1:7302 --token <TOKEN>";
        let error = failed(
            flags,
            "tenant put \"acme\"",
            Error::PermissionDenied("missing token".into()),
        );
        let text = error.to_string();
        assert!(
            text.starts_with("tenant put \"acme\": permission denied"),
            "{text}"
        );
        assert!(text.contains("--token"), "{text}");
        let error = failed(
            flags,
            "could not list tenants",
            Error::Unavailable {
                reason: "connection refused".into(),
            },
        );
        let text = error.to_string();
        assert!(
            text.ends_with(&format!("tollgate status {flags}")),
            "{text}"
        );
    }

    #[test]
    fn hints_repeat_the_cluster_and_the_token_flag_but_never_the_token() {
        let target = |token: Option<&str>| Target {
            cluster: vec!["127.0.0.1:7301".into(), " 127.0.0.1:7302".into()],
            token: token.map(str::to_owned),
            json: false,
        };
        assert_eq!(
            target(None).hint_flags(),
            "--cluster 127.0.0.1:7301,127.0.0.1:7302"
        );
        assert_eq!(target(Some("")).hint_flags(), target(None).hint_flags());
        let with_token = target(Some("s3cret")).hint_flags();
        assert_eq!(
            with_token,
            "--cluster 127.0.0.1:7301,127.0.0.1:7302 --token <TOKEN>"
        );
    }

    /// `tollgate limit put` with these flags after the tenant, id and scope.
    fn limit_put(flags: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec![
            "limit", "put", "--tenant", "a", "--id", "x", "--scope", "tenant",
        ];
        args.extend_from_slice(flags);
        parse(&args)
    }

    #[test]
    fn wrong_flag_combinations_are_usage_errors_from_clap() {
        use clap::error::ErrorKind;
        let cases: &[(&[&str], ErrorKind)] = &[
            (&["--dimension", "cost"], ErrorKind::MissingRequiredArgument),
            (
                &[
                    "--dimension",
                    "cost",
                    "--budget",
                    "1",
                    "--rate",
                    "2",
                    "--per",
                    "1s",
                ],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--budget", "1", "--concurrency", "3"],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--dimension", "calls", "--rate", "2"],
                ErrorKind::MissingRequiredArgument,
            ),
            (
                &[
                    "--dimension",
                    "calls",
                    "--rate",
                    "2",
                    "--per",
                    "1s",
                    "--window",
                    "day",
                ],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--dimension", "calls", "--budget", "2", "--burst", "1"],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--dimension", "calls", "--budget", "2", "--per", "1s"],
                ErrorKind::ArgumentConflict,
            ),
            (
                &["--concurrency", "2", "--window", "day"],
                ErrorKind::ArgumentConflict,
            ),
            (&["--per", "1s"], ErrorKind::MissingRequiredArgument),
            (&["--budget", "2"], ErrorKind::MissingRequiredArgument),
            (
                &["--dimension", "calls", "--rate", "2", "--per", "0s"],
                ErrorKind::ValueValidation,
            ),
            (
                &["--dimension", "cost", "--budget", "5xyz"],
                ErrorKind::ValueValidation,
            ),
            (
                &["--dimension", "cost", "--budget", "-5usd"],
                ErrorKind::UnknownArgument,
            ),
            (
                &["--dimension", "cost", "--budget=-5usd"],
                ErrorKind::ValueValidation,
            ),
            (
                &["--dimension", "cost", "--budget", "1.0000001usd"],
                ErrorKind::ValueValidation,
            ),
        ];
        for (flags, kind) in cases {
            let error = limit_put(flags).expect_err(&format!("{flags:?} was accepted"));
            assert_eq!(error.kind(), *kind, "{flags:?}: {error}");
            assert_eq!(error.exit_code(), 2, "{flags:?}");
        }
        let bad_money = limit_put(&["--dimension", "cost", "--budget", "5xyz"]).unwrap_err();
        assert!(bad_money.to_string().contains("5.25usd"), "{bad_money}");
        let query = parse(&["audit", "query", "--limit", "10001"]).unwrap_err();
        assert_eq!(query.kind(), ErrorKind::ValueValidation);
        assert!(query.to_string().contains("--after-seq"), "{query}");
    }

    #[test]
    fn money_flags_read_every_accepted_form() {
        for (budget, micros) in [
            ("5usd", 5_000_000),
            ("5.25usd", 5_250_000),
            ("$5", 5_000_000),
            ("5 USD", 5_000_000),
            ("50000000", 50_000_000),
        ] {
            let cli = limit_put(&["--dimension", "cost", "--budget", budget]).unwrap();
            let Top::Ops(OpsCommand::Limit(LimitCommand::Put {
                kind, dimension, ..
            })) = cli.command
            else {
                panic!("not limit put");
            };
            let (kind, _) = kind.to_wire(dimension).unwrap();
            assert_eq!(
                kind,
                tollgate_client::v1::limit::Kind::Budget(tollgate_client::v1::Budget {
                    window: tollgate_client::v1::Window::Lifetime.into(),
                    amount: micros,
                }),
                "{budget}"
            );
        }
    }
}
