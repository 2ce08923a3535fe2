//! The `acctor` binary: parses the command line, sets up logging, loads configuration
//! and hands over to the library. Everything testable lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use acctor::app::App;
use acctor::config::Settings;
use acctor::sandbox::{
    BankSandboxConfig, Sandbox, SandboxConfig, DEFAULT_BANK_API_KEY, DEFAULT_BANK_WEBHOOK_SECRET,
};
use acctor::telemetry::{self, LogFormat};

/// glibc's allocator spends most of a large sync in lock contention and `malloc_consolidate`
/// (measured with perf); mimalloc's per-thread heaps do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "acctor",
    version,
    about = "Webhook-driven, always-correct local copy of provider financial data"
)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "ACCTOR_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// A TOML file over the compiled-in defaults (config/default.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address, over the configuration's.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory, over the configuration's.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// A TOML file over the compiled-in defaults (config/default.toml): the service's.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory, over the configuration's.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The simulated account-opening bank of `acctor sandbox` (served under `/bank`).
#[derive(clap::Args, Debug)]
struct BankArgs {
    /// Where the bank sends its account-opening status webhooks (none by default).
    #[arg(long)]
    bank_webhook_url: Option<String>,
    /// A secret the bank signs webhooks with; repeat it during a rotation (one `v1`
    /// signature per secret).
    #[arg(long = "bank-webhook-secret", default_value = DEFAULT_BANK_WEBHOOK_SECRET)]
    bank_webhook_secrets: Vec<String>,
    /// The API key the bank accepts (`Authorization: Bearer <key>`).
    #[arg(long, default_value = DEFAULT_BANK_API_KEY)]
    bank_api_key: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service (with the embedded sandbox bank when no Plaid URL is configured).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Start the embedded sandbox and its demo accounts afresh: delete the sandbox's
        /// saved state (<data_dir>/sandbox) and link the demo items again under new ids.
        #[arg(long)]
        reset_demo: bool,
    },
    /// Re-seal every stored secret with the current key (secrets.key), so older keys
    /// can be removed from the configuration. Run it with the service stopped.
    RotateKey(StoreArgs),
    /// Run the simulated providers alone, for a separate acctor, a benchmark or a crash test.
    Sandbox {
        #[command(flatten)]
        common: Common,
        /// Where the sandbox sends webhooks by default (e.g. http://127.0.0.1:8080/webhooks/plaid).
        #[arg(long)]
        webhook_url: Option<String>,
        #[command(flatten)]
        bank: BankArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("acctor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { common, reset_demo } => {
            let mut settings = Settings::load(common.config.as_deref())?;
            settings.sandbox.reset_demo |= reset_demo;
            if let Some(listen) = common.listen {
                settings.server.listen = listen;
            }
            if let Some(dir) = common.data_dir {
                settings.store.data_dir = dir;
            }
            settings.validate()?;
            let app = App::build(settings).await?;
            println!("acctor listening on http://{}", app.addr());
            // The token itself goes to stdout only for the local demo (embedded sandbox,
            // no real provider data): a ready-to-click dashboard link. Otherwise only
            // where to find it; never into the (possibly shipped) log stream.
            match app.admin_token_source().path() {
                Some(path) => println!(
                    "admin api token: in {} (send it as Authorization: Bearer <token>)",
                    path.display()
                ),
                None => println!("admin api token: from server.admin_token"),
            }
            if let Some(path) = app.key_source().demo_key_file() {
                println!(
                    "secrets at rest: sealed with the demo key in {} (production configures secrets.key or secrets.key_file)",
                    path.display()
                );
            }
            if let Some(url) = app.sandbox_url() {
                println!("embedded sandbox bank on {url}");
                println!(
                    "local demo dashboard: http://{}/dashboard#token={}",
                    app.addr(),
                    app.admin_token().expose_secret()
                );
            }
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::RotateKey(args) => {
            let mut settings = Settings::load(args.config.as_deref())?;
            if let Some(dir) = args.data_dir {
                settings.store.data_dir = dir;
            }
            settings.validate()?;
            let resealed = acctor::app::rotate_key(&settings).await?;
            println!(
                "re-sealed {resealed} secret(s) with the current key; older keys can now be removed from the configuration"
            );
            Ok(())
        }
        Command::Sandbox {
            common,
            webhook_url,
            bank,
        } => {
            let mut settings = Settings::load(common.config.as_deref())?;
            if let Some(listen) = common.listen {
                settings.sandbox.listen = listen;
            }
            if let Some(url) = webhook_url {
                settings.sandbox.webhook_url = url;
            }
            settings.validate()?;
            let sandbox = Sandbox::new(SandboxConfig {
                client_id: settings.sandbox.client_id.clone(),
                secret: settings.sandbox.secret.expose_secret().to_string(),
                default_webhook_url: (!settings.sandbox.webhook_url.is_empty())
                    .then(|| settings.sandbox.webhook_url.clone()),
                seed: settings.sandbox.seed,
                data_dir: common.data_dir,
                bank: BankSandboxConfig {
                    api_key: bank.bank_api_key,
                    webhook_url: bank.bank_webhook_url,
                    webhook_secrets: bank.bank_webhook_secrets,
                    seed: settings.sandbox.seed,
                },
            })
            .context("opening the sandbox")?;
            let listener = tokio::net::TcpListener::bind(settings.sandbox.listen)
                .await
                .with_context(|| format!("binding {}", settings.sandbox.listen))?;
            let handle = sandbox.serve(listener).await;
            println!("sandbox bank listening on {}", handle.base_url());
            println!(
                "account-opening bank on {}/bank (controls under /bank/admin)",
                handle.base_url()
            );
            println!(
                "simulated Stripe on {}/stripe (controls under /stripe/admin)",
                handle.base_url()
            );
            shutdown_signal().await;
            handle
                .shutdown()
                .await
                .context("saving the sandbox state")?;
            Ok(())
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "could not listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "could not listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
