//! `zeroscale-demo`: the one-command demo (`./scripts/demo.sh`). The scenario is in
//! `zeroscale_e2e::demo`; this main enters a private network namespace, starts the local
//! control plane, runs the demo, prints the summary and stops everything (also on Ctrl-C).

use std::process::ExitCode;
use std::time::Instant;

use zeroscale_e2e::demo::{self, DemoOptions};
use zeroscale_testkit::{ClusterOptions, LocalCluster};

fn main() -> ExitCode {
    zeroscale_testkit::netns::ensure_private_netns();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zeroscale-demo: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Processes die with the thread that started them: everything starts from this thread.
    rt.block_on(async {
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        tokio::select! {
            code = demo_main() => code,
            () = stop => {
                eprintln!("\ninterrupted: stopping the add-on, the model pods and the control plane");
                ExitCode::from(130)
            }
        }
    })
}

async fn demo_main() -> ExitCode {
    let t0 = Instant::now();
    println!(
        "==> starting a local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler \
         and a real node (containerd + runc, CNI bridge, kubelet, kube-proxy, CoreDNS)"
    );
    let opts = ClusterOptions {
        real_node: true,
        ..ClusterOptions::default()
    };
    let cluster = match LocalCluster::start_with(opts).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zeroscale-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "    up in {:.1}s: {}",
        t0.elapsed().as_secs_f64(),
        cluster.server_url()
    );
    let result = demo::run(&cluster, &DemoOptions::default()).await;
    println!("==> stopping everything");
    drop(cluster);
    match result {
        Ok(summary) => {
            println!("\n{}", summary.table());
            if summary.passed() {
                println!("every request was answered 200");
                ExitCode::SUCCESS
            } else if summary.ok != summary.sent || !summary.failures.is_empty() {
                println!(
                    "FAILED: {} of {} requests were not answered 200 (see LOST above)",
                    summary.sent - summary.ok,
                    summary.sent
                );
                ExitCode::FAILURE
            } else {
                println!("FAILED: the pool went above its capacity (see pool peak above)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("zeroscale-demo failed: {e:?}");
            ExitCode::FAILURE
        }
    }
}
