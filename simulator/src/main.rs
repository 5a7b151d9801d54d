//! `tollgate-sim run PATH...`: replays runaway scenarios against a cluster and reports
//! whether each one was cut off in time, with the whole history checked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate_sim::runner::{self, Target};
use tollgate_sim::{chart, evaluate, history, report, scenario};

#[derive(Parser)]
#[command(
    name = "tollgate-sim",
    version,
    about = "Replays runaway AI agents against a Tollgate cluster and proves they are cut off."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs scenario files and checks their expectations.
    Run(RunArgs),
    /// Measures reserve-then-commit throughput and latency (Tollgate, etcd or Redis).
    Bench(tollgate_sim::bench::BenchArgs),
}

/// Counts heap bytes when the snapshot scenario asks (memory per agent); idle otherwise.
#[global_allocator]
static ALLOC: tollgate_sim::bench::alloc::CountingAlloc = tollgate_sim::bench::alloc::CountingAlloc;

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario files (TOML), e.g. simulator/scenarios/*.toml.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Run against this cluster (comma-separated host:port) instead of an embedded one.
    /// Scenarios that need a controllable clock or faults are refused.
    #[arg(long, value_delimiter = ',')]
    cluster: Option<Vec<String>>,
    /// Runs every scenario with seeds 1..=N (timings and faults randomised per seed).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Runs every scenario with exactly this seed (to replay a failure).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Writes the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Writes one SVG chart per scenario and seed into this directory.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Writes each run's history (JSON lines) and audit trail into this directory.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Prints every expectation of every run, not only failures.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,openraft=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Bench(args) => runtime.block_on(tollgate_sim::bench::main(args)),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let scenarios = args
        .paths
        .iter()
        .map(|p| scenario::load(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (1..=args.seeds.max(1)).collect(),
    };
    let target = match &args.cluster {
        Some(endpoints) => Target::External {
            endpoints: endpoints.clone(),
            // An admin key for --cluster: TOLLGATE_API_KEY or TOLLGATE_API_KEY_FILE.
            token: tollgate_client::api_key_from_env()?,
        },
        None => Target::Embedded,
    };
    for dir in [&args.chart, &args.history].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for loaded in &scenarios {
        for &seed in &seeds {
            match run_one(&args, loaded, seed, &target).await? {
                Run::Done(result) => results.push(*result),
                Run::CouldNotRun(error) => errors.push(error),
            }
        }
    }
    print_report(&args, &results, &errors)?;
    let passed = results.iter().filter(|r| r.passed).count();
    println!(
        "{passed}/{} runs passed, {} could not run, in {:.1} s",
        results.len(),
        errors.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(errors.is_empty() && passed == results.len())
}

/// One scenario with one seed, as the report counts it.
enum Run {
    Done(Box<evaluate::ScenarioResult>),
    /// Why the run could not start or finish, with the command that replays it.
    CouldNotRun(String),
}

/// One scenario with one seed: its result and files. An error is one writing the files;
/// a run that failed is reported, not returned.
async fn run_one(
    args: &RunArgs,
    loaded: &scenario::Loaded,
    seed: u64,
    target: &Target,
) -> anyhow::Result<Run> {
    let scenario = &loaded.scenario;
    let wall = Instant::now();
    let output = match runner::run(scenario, seed, target).await {
        Ok(output) => output,
        Err(error) => {
            eprintln!("{} (seed {seed}): could not run: {error:#}", scenario.name);
            return Ok(Run::CouldNotRun(format!(
                "{} (seed {seed}): {error:#}\n  replay: cargo run -p tollgate-sim -- run {} --seed {seed}",
                scenario.name, loaded.path
            )));
        }
    };
    let wall_ms = wall.elapsed().as_millis() as u64;
    let result = evaluate::evaluate(scenario, &loaded.path, seed, &output, wall_ms);
    eprintln!(
        "{} (seed {seed}): {} in {:.1} s",
        scenario.name,
        if result.passed { "PASS" } else { "FAIL" },
        wall_ms as f64 / 1e3
    );
    if let Some(dir) = &args.chart {
        let path = dir.join(format!("{}-seed{seed}.svg", scenario.name));
        // The time the run took, not the scenario's span: a run ends once every agent is
        // done, and the chart is about what happened.
        let run_ms = output.end_ms.saturating_sub(output.start_ms);
        std::fs::write(&path, chart::svg(&result, run_ms))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.history {
        write_history(dir, &format!("{}-seed{seed}", scenario.name), &output)?;
    }
    Ok(Run::Done(Box::new(result)))
}

/// The run's history and audit trail, as JSON lines.
fn write_history(dir: &Path, base: &str, output: &runner::RunOutput) -> anyhow::Result<()> {
    history::write_jsonl(&dir.join(format!("{base}.history.jsonl")), &output.events)?;
    let audit: Vec<String> = output
        .audit
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(
        dir.join(format!("{base}.audit.jsonl")),
        audit.join("\n") + "\n",
    )?;
    Ok(())
}

/// The table, the details with `--verbose`, failures and errors; the JSON with `--json`.
fn print_report(
    args: &RunArgs,
    results: &[evaluate::ScenarioResult],
    errors: &[String],
) -> anyhow::Result<()> {
    println!("{}", report::table(results));
    if args.verbose {
        println!("{}", report::details(results));
    }
    let failures = report::failures(results);
    if !failures.is_empty() {
        println!("{failures}");
    }
    for error in errors {
        println!("ERROR {error}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(results)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
