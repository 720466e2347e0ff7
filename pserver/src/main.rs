use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `.env` first, so its values act as environment defaults for clap.
    let _ = dotenvy::dotenv();
    let args = pserver::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match start(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pserver: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start(args: pserver::Args) -> anyhow::Result<()> {
    use anyhow::Context;
    let (api_addr, peer_addr, explicit_url) =
        (args.api_addr, args.peer_addr, args.public_url.is_some());
    let mut config = args.into_config()?;
    let api = std::net::TcpListener::bind(api_addr)
        .with_context(|| format!("cannot bind PSERVER_API_ADDR {api_addr}"))?;
    let peer = std::net::TcpListener::bind(peer_addr)
        .with_context(|| format!("cannot bind PSERVER_PEER_ADDR {peer_addr}"))?;
    let (api_local, peer_local) = (api.local_addr()?, peer.local_addr()?);
    // With port 0 the public URL derived from the peer address must carry the real port.
    if peer_addr.port() == 0 && !explicit_url && !peer_local.ip().is_unspecified() {
        config.public_url = format!("http://{peer_local}").parse()?;
    }
    println!(
        "pserver listening: api=http://{api_local} peer=http://{peer_local} public={}",
        config.public_url
    );
    pserver::run(api, peer, config, pserver::shutdown_signal()).await
}
