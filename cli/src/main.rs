//! `kubectl zeroscale` (a kubectl plugin: put `kubectl-zeroscale` on PATH). The work is in the
//! library.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use zeroscale_cli::{Scope, gather, render};

/// What zeroscale is doing for each model, and why.
#[derive(Debug, Parser)]
#[command(name = "kubectl-zeroscale", version)]
struct Args {
    /// Kubeconfig file; otherwise $KUBECONFIG or ~/.kube/config (or in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The add-on's namespace.
    #[arg(long, global = true, default_value = "zeroscale-system")]
    addon_namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A table of opted-in models: replicas, requests in flight and queued, the last decision.
    Status {
        /// Only this namespace (default: all namespaces).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Only this Deployment.
        model: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Refresh every 2 s until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// One model's decisions with their inputs, and what it sees now.
    Explain {
        /// The Deployment.
        model: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = zeroscale_kube::client::client(args.kubeconfig.as_deref(), |_| {}).await?;
    match args.command {
        Command::Status {
            namespace,
            model,
            output,
            watch,
        } => {
            let scope = Scope {
                namespace,
                deployment: model,
                addon_namespace: args.addon_namespace,
            };
            loop {
                let s = gather(&client, &scope).await?;
                let text = match output {
                    Output::Table => render::table(&s),
                    Output::Json => serde_json::to_string_pretty(&s)? + "\n",
                    Output::Yaml => serde_yaml_ng::to_string(&s)?,
                };
                if watch {
                    // Clear the screen and redraw in place.
                    print!("\x1b[H\x1b[2J{text}");
                } else {
                    print!("{text}");
                }
                std::io::stdout().flush()?;
                if !watch {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        Command::Explain { model, namespace } => {
            let scope = Scope {
                namespace: Some(namespace.clone()),
                deployment: Some(model.clone()),
                addon_namespace: args.addon_namespace,
            };
            let s = gather(&client, &scope).await?;
            let m = s.models.first().ok_or_else(|| {
                anyhow::anyhow!("no opted-in Deployment {namespace}/{model} (is zeroscale.dev/enabled \"true\" on it?)")
            })?;
            print!("{}", render::explain(m, s.figures_unavailable.as_deref()));
            Ok(())
        }
    }
}
