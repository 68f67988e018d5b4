use clap::Parser;
use color_eyre::eyre::Result;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<()> {
    color_eyre::install()?;
    let config = nm::Config::parse();
    shared::logging::init(config.log_format, "info");
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    nm::run(config, shutdown).await
}
