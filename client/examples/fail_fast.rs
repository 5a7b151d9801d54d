//! How fast a reserve fails while the whole cluster is down (every node refuses the
//! connection), with the default config: prints the first reserve's time (the one that finds
//! every node down) and the median and maximum of 20 reserves in a row.
//!
//! ```text
//! cargo run -p tollgate-client --example fail_fast --release
//! ```

use std::time::{Duration, Instant};

use tollgate_client::{Client, ClientConfig, Error, ReserveRequest};

/// Reserves measured.
const RESERVES: usize = 20;
/// Nodes of the pretend cluster.
const NODES: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Ports nothing listens on: bound, then closed.
    let mut endpoints = Vec::with_capacity(NODES);
    for _ in 0..NODES {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        endpoints.push(listener.local_addr()?.to_string());
    }
    let client = Client::new(ClientConfig::new(endpoints.iter().cloned()))?;

    let mut times: Vec<Duration> = Vec::with_capacity(RESERVES);
    for _ in 0..RESERVES {
        let started = Instant::now();
        match client
            .reserve(ReserveRequest::new("acme", "bot", "search"))
            .await
        {
            Err(Error::Unavailable { .. }) => times.push(started.elapsed()),
            other => return Err(format!("expected Unavailable, got {other:?}").into()),
        }
    }
    let first = times[0];
    times.sort_unstable();
    println!(
        "{RESERVES} reserves against {NODES} refusing nodes (deadline {} ms): first {:.1} us, median {:.1} us, max {:.1} us",
        client.config().deadline.as_millis(),
        first.as_secs_f64() * 1e6,
        times[RESERVES / 2].as_secs_f64() * 1e6,
        times[RESERVES - 1].as_secs_f64() * 1e6,
    );
    Ok(())
}
