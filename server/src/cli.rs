//! The operator subcommands of `tollgate`, in the manner of `etcdctl`: each is one or a
//! few calls through `tollgate_client`, printed as an aligned table for people or as JSON
//! (`--json`) for scripts. Decides nothing: the cluster validates and answers, this module
//! only parses flags, calls and prints.

pub mod archive;
mod audit;
pub mod certs;
mod cluster;
mod keys;
mod money;
mod ops;
mod parse;
mod prices;
pub(crate) mod render;
mod tenants;

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;

pub use audit::{AuditCommand, AuditFilterArgs};
pub use cluster::ClusterCommand;
pub use keys::KeyCommand;
use ops::{out, Ops};
pub use ops::{Target, UsageError, ROWS_DEFAULT};
pub use prices::{default_prices, PriceCommand};
pub use tenants::{FreezeArgs, LimitCommand, TenantCommand};

/// Time `tollgate health` may take, connect included: a container health check must not
/// hang.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Operator subcommands. Amounts of tokens and calls are counts; cost is money (`5usd`,
/// `$5.25`, `5 USD`) or a bare integer of micro-units (1 USD = 1_000_000).
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Raft status of every node in --cluster (role, term, quorum, indexes, audit chain head).
    Status {
        /// Exit non-zero unless some node answers that it is in touch with a quorum.
        #[arg(long)]
        quorum: bool,
    },
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
        /// Adds the tenant's each-session limits as this session has used them.
        #[arg(long)]
        session: Option<String>,
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
    /// Create, list, rotate and revoke API keys; generate a bootstrap admin key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Set, list and load a tenant's price table (what each model costs).
    #[command(subcommand)]
    Price(PriceCommand),
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
    if let OpsCommand::Audit(AuditCommand::Verify {
        file,
        archive,
        expect_head,
    }) = &command
    {
        if file.is_some() || archive.is_some() || expect_head.is_some() {
            let (file, archive) = (file.as_deref(), archive.as_deref());
            return audit::verify_offline(target.json, file, archive, expect_head.clone());
        }
    }
    if let OpsCommand::Key(KeyCommand::Generate) = &command {
        return keys::generate();
    }
    if let OpsCommand::Price(PriceCommand::Default) = &command {
        return out(prices::DEFAULT_TABLE);
    }
    let ops = Ops {
        client: target.client()?,
        json: target.json,
        hint_flags: target.hint_flags(),
    };
    match command {
        OpsCommand::Status { quorum } => cluster::status(&target, quorum).await,
        OpsCommand::Tenant(command) => tenants::tenant(&ops, command).await,
        OpsCommand::Limit(command) => tenants::limit(&ops, command).await,
        OpsCommand::Freeze(args) => {
            // Answered once no lease on the scope is out: give it the time that takes.
            let wait = crate::grpc::FREEZE_LEASES_WAIT;
            let ops = Ops {
                client: target.patient_client(wait)?,
                ..ops
            };
            tenants::freeze(&ops, args, true).await
        }
        OpsCommand::Unfreeze(args) => tenants::freeze(&ops, args, false).await,
        OpsCommand::ResetTrip { tenant, agent } => tenants::reset_trip(&ops, &tenant, &agent).await,
        OpsCommand::Usage {
            tenant,
            agent,
            tool,
            session,
        } => {
            let filters = (agent.as_deref(), tool.as_deref(), session.as_deref());
            tenants::usage(&ops, &tenant, filters).await
        }
        OpsCommand::Reservations {
            tenant,
            agent,
            limit,
        } => tenants::reservations(&ops, &tenant, agent.as_deref(), limit).await,
        OpsCommand::Audit(command) => audit::audit(&ops, command).await,
        OpsCommand::Cluster(command) => cluster::membership(&ops, command).await,
        OpsCommand::Key(command) => keys::key(&ops, command).await,
        OpsCommand::Price(command) => prices::price(&ops, command).await,
    }
}

/// gRPC health check (`grpc.health.v1`) of the node at `addr`, over TLS when `target` has
/// a CA: `Ok` if it is serving, an error saying why not otherwise, all within
/// [`HEALTH_TIMEOUT`]. A node serves only while it is in touch with a quorum, so a node
/// that is up but cut off from a majority fails this check.
pub async fn health(target: &Target, addr: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let tls = target.tls()?;
    let uri =
        tollgate_client::normalise_endpoint(addr, tls.is_some()).map_err(|e| anyhow!("{e}"))?;
    let check = async {
        let mut endpoint = tonic::transport::Endpoint::from_shared(uri)?
            .connect_timeout(HEALTH_TIMEOUT)
            .timeout(HEALTH_TIMEOUT);
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.tonic())?;
        }
        let channel = endpoint.connect().await?;
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
            "node {addr} is not serving: {} (no quorum in touch, or its Raft core failed; \
             see tollgate status)",
            other.as_str_name()
        )),
        Err(_) => Err(anyhow!(
            "node {addr} answered an unknown health status {status}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::ops::failed;
    use super::parse::DimensionArg;
    use super::*;
    use clap::{CommandFactory, Parser};
    use tollgate_client::Error;

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

    // Parsed once per test; the size of a variant costs nothing here.
    #[allow(clippy::large_enum_variant)]
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
        let cli = parse(&["--api-key-file", "k", "status"]).unwrap();
        assert_eq!(cli.target.api_key_file, Some("k".into()));
        assert!(matches!(
            cli.command,
            Top::Ops(OpsCommand::Status { quorum: false })
        ));
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
        assert_eq!(policy.repeat_max, 5);
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
    fn the_api_key_comes_from_its_file_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "tg_bootstrap_0123\n").unwrap();
        let target = Target {
            cluster: vec!["a:1".into(), " b:2".into(), String::new()],
            api_key_file: Some(path),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            json: false,
        };
        let config = target.client_config().unwrap();
        assert_eq!(config.token.as_deref(), Some("tg_bootstrap_0123"));
        assert_eq!(config.endpoints, ["a:1", "b:2"]);
        let missing = Target {
            api_key_file: Some(dir.path().join("absent")),
            ..target
        };
        assert!(missing.client_config().is_err());
    }

    #[test]
    fn no_secret_is_accepted_on_the_command_line() {
        assert!(parse(&["--token", "t", "status"]).is_err());
        assert!(parse(&["--api-key", "t", "status"]).is_err());
    }

    #[test]
    fn failures_name_what_failed_and_hint_at_the_fix() {
        let flags = "--cluster 127.0.0.1:7301,127.0.0.1:7302 --api-key-file k";
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
        assert!(text.contains("--api-key-file"), "{text}");
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
    fn hints_repeat_the_cluster_and_the_key_file_but_never_a_key() {
        let target = |file: Option<&str>| Target {
            cluster: vec!["127.0.0.1:7301".into(), " 127.0.0.1:7302".into()],
            api_key_file: file.map(Into::into),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            json: false,
        };
        assert_eq!(
            target(None).hint_flags(),
            "--cluster 127.0.0.1:7301,127.0.0.1:7302"
        );
        let with_file = target(Some("/run/keys/admin")).hint_flags();
        assert_eq!(
            with_file,
            "--cluster 127.0.0.1:7301,127.0.0.1:7302 --api-key-file /run/keys/admin"
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
