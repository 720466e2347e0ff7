use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One crypto provider for the whole process (ring; see `pserver::tls`).
    pserver::tls::install_provider();
    // `.env` first, so its values act as environment defaults for clap; a
    // line it cannot parse stops start-up (never a setting silently dropped).
    let settings = match peerdex_common::settings::load(&pserver::Args::command(), "PSERVER_") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pserver: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut args = pserver::Args::parse();
    if let Some(pserver::Command::Token(pserver::TokenCommand::Create {
        scope,
        ttl,
        name,
        json,
    })) = args.command.take()
    {
        for u in &settings.unknown {
            eprintln!("pserver: warning: {u}");
        }
        return match pserver::tokens::create_command(&args.data_dir, scope, ttl, &name, json) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pserver token create: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    for u in &settings.unknown {
        tracing::warn!("{u}");
    }
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
    let (api_addr, peer_addr) = (args.api_addr, args.peer_addr);
    let api = std::net::TcpListener::bind(api_addr)
        .with_context(|| format!("cannot bind PSERVER_API_ADDR {api_addr}"))?;
    let peer = std::net::TcpListener::bind(peer_addr)
        .with_context(|| format!("cannot bind PSERVER_PEER_ADDR {peer_addr}"))?;
    let (api_local, peer_local) = (api.local_addr()?, peer.local_addr()?);
    let config = args.into_config(peer_local)?;
    // One line on stdout, for scripts and tests that start us on port 0.
    let scheme = |tls: bool| if tls { "https" } else { "http" };
    println!(
        "pserver listening: api={}://{api_local} peer={}://{peer_local} public={}",
        scheme(config.api_tls),
        scheme(config.tls.is_some()),
        config.public_url
    );
    Ok(pserver::run(api, peer, config, pserver::shutdown_signal()).await?)
}
