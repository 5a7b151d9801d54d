//! An agent worker for the lease crash tests (tests/tests/lease_crash.rs): reserves and
//! commits `--tokens` per call through `Client::reserve` until it is denied, printing one
//! line per acknowledged commit (`committed TOKENS LEASE`, LEASE `-` for a per-call one)
//! the moment it returns, so a test that kills it with SIGKILL knows exactly what it was
//! told. It decides nothing about correctness.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use tollgate_client::{Amounts, Client, ClientConfig, Error, ReserveRequest};

#[derive(Parser)]
struct Cli {
    /// The cluster's client endpoints, comma separated.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    agent: String,
    /// Tokens each call reserves and commits.
    #[arg(long)]
    tokens: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = Client::new(ClientConfig::new(cli.endpoints.iter().cloned()))?;
    let mut out = std::io::stdout().lock();
    loop {
        let request = ReserveRequest::new(&cli.tenant, &cli.agent, "llm").tokens(cli.tokens);
        let reservation = match client.reserve(request).await {
            Ok(reservation) => reservation,
            Err(Error::Denied { .. }) => {
                writeln!(out, "denied")?;
                out.flush()?;
                client.return_leases().await;
                return Ok(());
            }
            Err(error) => return Err(error).context("reserve"),
        };
        let lease = reservation.info().lease_id;
        reservation
            .commit(Amounts::new(cli.tokens, 0, 1))
            .await
            .context("commit")?;
        let lease = lease.map_or_else(|| "-".to_owned(), |id| id.to_string());
        writeln!(out, "committed {} {lease}", cli.tokens)?;
        out.flush()?;
    }
}
