use clap::Parser;
use console::batch::{self, Format};
use console::cli::{Args, Sub};
use console::client::Client;
use harness::local::LocalCluster;
use std::io::IsTerminal;
use std::process::ExitCode;
use tokio::io::{AsyncBufRead, BufReader};

fn main() -> ExitCode {
    let _ = color_eyre::install();
    let args = Args::parse();
    if let Some(Sub::Bench { args }) = args.command {
        return bench(args);
    }
    // A script's commands run one after the other on one thread: a
    // runtime of one thread wakes no other to hand a reply over (the
    // screen and the demo's cluster take the multi-threaded one).
    let runtime = if args.batch.is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => {
            eprintln!("console: cannot start: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> ExitCode {
    if let Some(ip) = args.bind {
        shared::connection::set_source_ip(ip);
    }
    let interactive = args.batch.is_none();
    if interactive && !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        eprintln!(
            "console: not a terminal: the console's screen needs one; use --batch FILE (or --batch - for standard input) to run commands from a script"
        );
        return ExitCode::from(2);
    }
    if let Some(Sub::Demo(demo_args)) = &args.command {
        return demo(demo_args.ha, args.user.clone()).await;
    }
    let Some(script) = args.batch.clone() else {
        return match console::tui::run(args.nm.clone(), args.user.clone(), None).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("console: {e}");
                ExitCode::from(2)
            }
        };
    };
    let input: Box<dyn AsyncBufRead + Unpin> = if script.as_os_str() == "-" {
        Box::new(BufReader::new(tokio::io::stdin()))
    } else {
        match tokio::fs::File::open(&script).await {
            Ok(f) => Box::new(BufReader::new(f)),
            Err(e) => {
                eprintln!("console: cannot open {}: {e}", script.display());
                return ExitCode::from(2);
            }
        }
    };
    let mut client = match Client::connect(&args.nm, &args.user).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("console: cannot connect to nm at {}: {e}", args.nm);
            return ExitCode::from(2);
        }
    };
    let format = if args.json {
        Format::Json
    } else {
        Format::Human
    };
    let mut out = std::io::stdout().lock();
    match batch::run(&mut client, input, format, &mut out).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("console: {e}");
            ExitCode::from(2)
        }
    }
}

/// `console demo`: a local cluster of nm (or, with `--ha`, etcd and three
/// nm) and two pairs, and the console on it.
async fn demo(ha: bool, user: String) -> ExitCode {
    if ha {
        eprintln!("console demo: starting etcd, three nm and two primary/backup pairs…");
    } else {
        eprintln!("console demo: starting nm and two primary/backup pairs…");
    }
    let started = async {
        let mut cluster = if ha {
            LocalCluster::start_ha(None, true, "100ms", "1s", "async", 3).await?
        } else {
            LocalCluster::start(None, true, "100ms", "1s", "async").await?
        };
        for name in ["ss1", "ss1_backup", "ss2", "ss2_backup"] {
            cluster.start_ss(name).await?;
        }
        Ok::<_, harness::local::ClusterError>(cluster)
    };
    let cluster = match started.await {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("console demo: {e}");
            return ExitCode::from(2);
        }
    };
    let nm = cluster.nm_addr().to_owned();
    match console::tui::run(nm, user, Some(cluster)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("console: {e}");
            ExitCode::from(2)
        }
    }
}

/// `console bench …`: runs `docs-bench` from this binary's folder with the
/// same arguments (it replaces this process).
fn bench(args: Vec<std::ffi::OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("docs-bench")));
    let Some(program) = beside.filter(|p| p.exists()) else {
        eprintln!(
            "console bench: the docs-bench binary is not beside the console; build the workspace (cargo build --release)"
        );
        return ExitCode::from(2);
    };
    let error = std::process::Command::new(&program).args(args).exec();
    eprintln!("console bench: cannot run {}: {error}", program.display());
    ExitCode::from(2)
}
