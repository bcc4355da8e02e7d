//! Activator benchmarks (see BENCHMARKS.md, "Activator", and `scripts/bench-proxy.sh`).
//!
//! One binary, several roles, so each role can run as its own process pinned with `taskset`:
//! - `backend`: the test kit's sample model (zero service time), the backend of every run;
//! - `activator`: the activator library with a static routing table (no Kubernetes): model
//!   `sample` routed to `--backend`, model `idle` with no endpoints;
//! - `load`: an open-loop load generator at a fixed rate, latency per request;
//! - `hold`: a bare hyper server that never answers (the memory floor of a held request);
//! - `flood`: many concurrent clients each sending one request to the idle model, then the
//!   activator's resident memory;
//! - `ready`: endpoint-Ready -> first queued request forwarded, in one process.

mod activator;
mod backend;
mod flood;
mod load;
mod ready;
mod stats;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "activator-bench")]
struct Args {
    /// Tokio worker threads (0: a current-thread runtime). For `activator`: its proxy worker
    /// threads (each a current-thread runtime, as in the binary; 0 counts as 1).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// The sample model server.
    Backend {
        /// Listen address.
        #[arg(long)]
        listen: SocketAddr,
        /// The model it serves (it answers 404 for others).
        #[arg(long, default_value = "sample")]
        model: String,
    },
    /// A bare hyper server that holds every request (memory baseline).
    Hold {
        /// Listen address.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The activator with a static table.
    Activator(activator::Opts),
    /// Open-loop load at a fixed rate.
    Load(load::Opts),
    /// Concurrent one-request clients against the idle model; reports activator RSS.
    Flood(flood::Opts),
    /// Endpoint-Ready -> first queued request forwarded.
    Ready(ready::Opts),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = if args.threads == 0 || matches!(args.role, Role::Activator(_)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        match args.role {
            Role::Backend { listen, model } => backend::run(listen, model).await,
            Role::Hold { listen } => backend::hold(listen).await,
            Role::Activator(o) => activator::run(o, args.threads).await,
            Role::Load(o) => load::run(o).await,
            Role::Flood(o) => flood::run(o).await,
            Role::Ready(o) => ready::run(o).await,
        }
    })
}
