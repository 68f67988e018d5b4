use clap::Parser;
use color_eyre::eyre::Result;

/// nm runs on one thread. Its work per request is short (a lookup under the
/// state's lock, a journal record handed to the journal's own thread), and
/// with one thread a reply never waits for another thread to be woken, and
/// none is woken to steal a task: summed over nm's threads (`/proc`), a
/// CREATE+WRITE pair cost 6.3 context switches on two worker threads and
/// 4.9 on one. The journal's fsyncs and the high-availability leader's
/// term runtime have threads of their own.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    color_eyre::install()?;
    let config = nm::Config::parse();
    daemon::logging::init(config.log_format, "info");
    nm::run(config, daemon::shutdown::on_signal()).await
}
