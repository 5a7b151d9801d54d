//! `tollgate`: run a node (`serve`), a local three-node cluster with a demo (`dev`), or operate
//! a cluster (status, limits, freeze, usage, audit...), in the manner of `etcdctl`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_server::cli::{self, OpsCommand, Target};
use tollgate_server::config::ServeArgs;
use tollgate_server::dev::{self, DevArgs};
use tollgate_server::traces::{self, Traces};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "The spend and rate-limit authority for AI agents"
)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster.
    Serve(Box<ServeArgs>),
    /// Run a three-node cluster on 127.0.0.1:7001-7003 with example tenants, and a demo.
    Dev(DevArgs),
    /// Exit 0 if the node at --addr answers gRPC health checks as serving (for containers).
    /// Uses TLS when --tls-ca is set (the global TLS flags).
    Health {
        #[arg(long, default_value = "127.0.0.1:7001")]
        addr: String,
    },
    /// Make the certificates of a cluster that runs with mutual TLS.
    #[command(subcommand)]
    Certs(cli::certs::CertsCommand),
    #[command(flatten)]
    Ops(OpsCommand),
}

/// Logs to stderr, and RPC spans to the OTLP collector at `otlp_endpoint` when one is set:
/// the returned [`Traces`] flushes them at exit.
fn init_logging(otlp_endpoint: Option<&str>) -> anyhow::Result<Option<Traces>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,chunked_wal=warn"))
        .add_directive(format!("{}=off", traces::RPC_TARGET).parse()?);
    let json = std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|f| f == "json");
    // Colour codes only for a person at a terminal: files, pipes and `docker logs` get text.
    let log = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let log = match json {
        true => log.json().with_filter(filter).boxed(),
        false => log.with_filter(filter).boxed(),
    };
    let traces = otlp_endpoint
        .map(|endpoint| Traces::start(endpoint, None))
        .transpose()?;
    let mut layers = vec![log];
    layers.extend(traces.as_ref().map(Traces::layer));
    tracing_subscriber::registry().with(layers).init();
    Ok(traces)
}

/// Sends the spans still queued before the process ends.
async fn flush_traces(traces: Option<Traces>) {
    if let Some(traces) = traces {
        // The flush blocks its thread until the collector answers: not a runtime worker.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
}

/// mimalloc instead of glibc's malloc: allocation and free were a fifth of a loaded node's
/// CPU, and the static glibc of the image is no faster.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A node stops at the first panic instead of limping on: a panic inside a task (the state
/// machine's, say) would otherwise end that task alone and leave a node that answers health
/// checks but never applies another entry. Stopped, it is restarted by its supervisor
/// (`restart: unless-stopped` in docker-compose.yml) and catches up from its log and peers.
fn crash_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(%info, "panic: stopping the node");
        std::process::abort();
    }));
}

/// Errors are printed as their chain of causes (`error: reading X: permission denied`), never
/// with a backtrace: they are a user's problem to fix, not a bug to debug. Panics still print
/// one under `RUST_BACKTRACE`.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            let traces = init_logging(config.otlp_endpoint.as_deref())?;
            crash_on_panic();
            let served = tollgate_server::start::serve_until_signal(config).await;
            flush_traces(traces).await;
            served
        }
        Command::Dev(args) => {
            let traces = init_logging(args.otlp_endpoint.as_deref())?;
            let ran = dev::run(args).await;
            flush_traces(traces).await;
            ran
        }
        Command::Health { addr } => cli::health(&cli.target, &addr).await,
        Command::Certs(command) => cli::certs::run(command),
        Command::Ops(command) => cli::run(cli.target, command).await,
    }
}
