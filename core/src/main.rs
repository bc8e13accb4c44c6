//! The `realtime` binary: `serve` (default), `gentoken`, `checkconfig`, `checktoken`, `migrate`,
//! `plugin run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use realtime_core::auth::{TokenRequest, mint_token};
use realtime_core::config::{LogFormat, Settings};
use realtime_core::descriptors;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "realtime",
    version,
    about = "Realtime WebSocket server: rooms, presence, events"
)]
struct Cli {
    /// Extra configuration file (TOML), layered over config/default.toml; also REALTIME_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print a token signed with the configured key (development convenience).
    Gentoken {
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Comma-separated `rooms` claim: exact room ids or `type:*`.
        #[arg(long, default_value = "")]
        rooms: String,
        /// PEM private key, when auth uses a public key (RS256/ES256).
        #[arg(long, value_name = "FILE")]
        private_key: Option<PathBuf>,
    },
    /// Validate the configuration, load and initialise every configured plugin, and print the
    /// effective configuration, secrets masked.
    Checkconfig,
    /// Say what the server thinks of a token: valid (user, expiry) or why not, and its claims.
    /// Exits 0 when valid, non-zero when not.
    Checktoken {
        /// The JWT.
        token: String,
    },
    /// Plugin tooling.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Apply pending database migrations (`database.url`) and exit.
    Migrate,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run one plugin on one event under the production host and limits; prints the outcome
    /// and the time the call took, as JSON.
    Run {
        /// The plugin (.wasm: a component, or a core module built with sdk-plugin).
        #[arg(long, value_name = "FILE")]
        wasm: PathBuf,
        /// The plugin's configuration, JSON (what `[plugins.<name>] config` holds). Not
        /// `--config`, which is the server's configuration file for every command.
        #[arg(long, default_value = "{}", value_name = "JSON")]
        plugin_config: String,
        /// The event, a JSON file: {"name": "match.update", "room": "competition:1",
        /// "payload": {...}, "sender"?: "alice", "timestampMs"?: 1795643627123}.
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
    },
}

fn init_logging(settings: &Settings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Raises the open-file limit and grows the descriptor table for `max_connections` sockets, saying
/// when the limit is below what the configuration asks for (sockets past it fail to be accepted
/// before the node counts as full).
fn prepare_descriptors(max_connections: u64) {
    let Some(open_file_limit) = descriptors::reserve_for_sockets(max_connections) else {
        tracing::warn!("could not read the open-file limit");
        return;
    };
    let wanted = max_connections.saturating_add(descriptors::SPARE_DESCRIPTORS);
    if wanted > open_file_limit {
        tracing::warn!(
            open_file_limit,
            wanted,
            "the open-file limit is below server.max_connections + {}",
            descriptors::SPARE_DESCRIPTORS
        );
    }
    tracing::info!(
        open_files = open_file_limit,
        descriptor_table = descriptors::descriptor_table_size(),
        "descriptors"
    );
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings);
    if settings.uses_development_secret() {
        tracing::warn!(
            "auth.jwt_secret is the development secret from config/default.toml: \
             set REALTIME_AUTH__JWT_SECRET before exposing this server"
        );
    }
    prepare_descriptors(settings.server.max_connections as u64);
    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| {
            format!(
                "configuration key `server.listen`: cannot bind {}",
                settings.server.listen
            )
        })?;
    let server = realtime_core::server::Server::start(settings, listener).await?;
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangups.recv() => {
                let swapped = server.reload_plugins().await;
                tracing::info!(swapped, "SIGHUP: plugins re-read");
            }
        }
    }
    server.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole chain on one line; a backtrace would only bury the key name.
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(settings)),
        Command::Gentoken {
            sub,
            ttl,
            rooms,
            private_key,
        } => {
            let pem = private_key
                .map(|path| {
                    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
                })
                .transpose()?;
            let request = TokenRequest {
                user_id: sub,
                ttl,
                rooms: rooms
                    .split(',')
                    .map(str::trim)
                    .filter(|room| !room.is_empty())
                    .map(String::from)
                    .collect(),
            };
            println!("{}", mint_token(&settings.auth, pem.as_deref(), &request)?);
            Ok(())
        }
        Command::Migrate => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let pool = realtime_core::notifications::sql::connect(&settings.database).await?;
                let applied = realtime_core::notifications::sql::migrate(&pool).await?;
                println!("database is up to date ({applied} migration(s) applied now)");
                Ok(())
            }),
        Command::Checkconfig => {
            // A JWKS is fetched when the server starts; a static key is checked here.
            if settings.auth.jwks_url.is_none() {
                realtime_core::auth::TokenVerifier::from_settings(&settings.auth)?;
            }
            // A missing or broken plugin fails here, not at the next start.
            let plugins = realtime_core::plugins::PluginHost::load(&settings)?;
            println!(
                "# configuration is valid ({} plugin(s) loaded and initialised)\n{}",
                settings.plugins.len(),
                settings.to_masked_toml()
            );
            drop(plugins);
            Ok(())
        }
        Command::Checktoken { token } => {
            let check = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let verifier = realtime_core::server::token_verifier(&settings.auth).await?;
                    anyhow::Ok(realtime_core::auth::TokenCheck::of(&verifier, &token))
                })?;
            println!("{}", serde_json::to_string_pretty(&check.to_json())?);
            if check.verdict.is_err() {
                return Err(anyhow::anyhow!("the token is not valid for this server"));
            }
            Ok(())
        }
        Command::Plugin {
            command:
                PluginCommand::Run {
                    wasm,
                    plugin_config,
                    event,
                },
        } => {
            // A failing plugin's reason (trap, timeout, memory) is the host's warning; logs go
            // to stderr so that stdout stays the JSON report.
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
                )
                .with_writer(std::io::stderr)
                .init();
            let config: serde_json::Value =
                serde_json::from_str(&plugin_config).context("--plugin-config is not JSON")?;
            let event_text = std::fs::read_to_string(&event)
                .with_context(|| format!("cannot read {}", event.display()))?;
            let event: realtime_core::plugins::trial::TrialEvent =
                serde_json::from_str(&event_text).with_context(|| {
                    format!("{} is not an event (name, room, payload)", event.display())
                })?;
            let report = realtime_core::plugins::trial::run_plugin_once(
                &settings.plugin_runtime,
                &wasm,
                config,
                &event,
            )?;
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            Ok(())
        }
    }
}
