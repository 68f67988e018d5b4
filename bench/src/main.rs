//! `docs-bench WORKLOAD [OPTIONS]`, also run as `console bench …`: thin; the
//! workloads are in the library.

use clap::Parser;
use std::process::ExitCode;

/// Run a workload against a local cluster started for it and print
/// throughput, latency, replication lag or transfer rate.
#[derive(Debug, Parser)]
#[command(name = "docs-bench", bin_name = "console bench", version)]
struct Args {
    #[command(flatten)]
    bench: docs_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = color_eyre::install();
    let args = Args::parse().bench;
    let json = args.json;
    match docs_bench::run(args).await {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("a report serializes")
                );
            } else {
                print!("{}", docs_bench::render(&report));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("console bench: {e}");
            ExitCode::from(2)
        }
    }
}
