use clap::Parser;
use color_eyre::eyre::Result;

#[tokio::main]
async fn main() -> Result<()> {
    color_eyre::install()?;
    let config = nm::Config::parse();
    daemon::logging::init(config.log_format, "info");
    nm::run(config, daemon::shutdown::on_signal()).await
}
