use clap::Parser;
use color_eyre::eyre::Result;

/// nm runs on one thread. Its work per request is short (a lookup under the
/// state's lock, a journal record handed to the journal's own thread), and
/// with one thread a reply never waits for another thread to be woken, and
/// none is woken to steal a task: nm's context switches per CREATE+WRITE
/// pair fell by about two (BENCHMARKS.md, session 22). The journal's fsyncs
/// and the high-availability runtime have threads of their own.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    color_eyre::install()?;
    let config = nm::Config::parse();
    daemon::logging::init(config.log_format, "info");
    nm::run(config, daemon::shutdown::on_signal()).await
}
