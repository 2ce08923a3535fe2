//! Application start-up: [`App::build`] wires store, providers, actors and the HTTP
//! server from [`Settings`] and binds the listener (port 0 works, so tests run in
//! parallel); [`App::run_until_stopped`] serves until the shutdown future resolves, then
//! stops accepting webhooks, stops the actors and makes the store durable.
//!
//! With no Plaid URL configured and `sandbox.embedded` on, the simulated bank runs inside
//! the process on its own listener, its webhooks point back at this server, and demo
//! items are linked so a newcomer sees accounts syncing at once.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use ractor::Actor;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::actors::operation::{OperationDeps, OperationRegistry};
use crate::actors::supervisor::Supervisor;
use crate::actors::sweeper::{SweeperActor, SweeperMessage};
use crate::actors::{ActorContext, Registry};
use crate::clock::{self, SharedClock};
use crate::config::Settings;
use crate::domain::{LinkStatus, ProviderKind};
use crate::http::auth::{resolve_admin_token, AdminTokenSource};
use crate::http::health::Readiness;
use crate::http::{router, AppState};
use crate::outbound::{Destinations, Sender};
use crate::providers::bank::{BankClient, BankClientConfig, BankWebhookVerifier};
use crate::providers::budget::RequestBudget;
use crate::providers::plaid::{PlaidClient, PlaidClientConfig};
use crate::providers::stripe::{DynStripeApi, StripeClient, StripeClientConfig};
use crate::providers::{DynCursorSource, DynProvider};
use crate::sandbox::{BankSandboxConfig, Sandbox, SandboxConfig, SandboxHandle};
use crate::service;
use crate::service::accounts::{self, LinkInput};
use crate::store::Resolved;
use crate::store::{AsyncStore, Store};
use crate::sync::bank::OpeningParams;
use crate::sync::plaid::SyncParams;
use crate::sync::stripe::StripeParams;

mod backend;
mod secrets;

use backend::OpenedStore;

pub use secrets::{resolve_keyring, rotate_key, KeySource};

/// A built, bound, not yet serving application.
pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    sandbox: Option<EmbeddedSandbox>,
    supervisor: ractor::ActorRef<crate::actors::supervisor::SupervisorMessage>,
    sweeper: ractor::ActorRef<SweeperMessage>,
    store: OpenedStore,
    janitor: JoinHandle<()>,
    admin_token_source: AdminTokenSource,
    key_source: KeySource,
    alerts: Option<JoinHandle<()>>,
}

struct EmbeddedSandbox {
    handle: SandboxHandle,
    demo: Option<JoinHandle<()>>,
    stripe_demo: Option<JoinHandle<()>>,
}

impl App {
    /// Opens the store, starts the embedded sandbox if configured, spawns the supervisor
    /// and binds the HTTP listener.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        Self::build_with_store_layer(settings, clock::system(), |store| store).await
    }

    /// [`App::build`], reading "now" from `clock` for every decision (tests and
    /// benchmarks jump it to run 30-minute polls and 12-hour deadlines at once).
    pub async fn build_with_clock(settings: Settings, clock: SharedClock) -> anyhow::Result<App> {
        Self::build_with_store_layer(settings, clock, |store| store).await
    }

    /// [`App::build`], with everything but the final shutdown flush talking to the store
    /// through `layer(store)`: the seam the tests use to make the store fail. Private on
    /// purpose, so no production path can reach it.
    async fn build_with_store_layer(
        mut settings: Settings,
        clock: SharedClock,
        layer: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    ) -> anyhow::Result<App> {
        settings.validate()?;
        let (keyring, key_source) = resolve_keyring(&settings)?;
        let store = OpenedStore::open(&settings, keyring).await?;
        // After the store: it creates the data dir the generated token lives in.
        let admin_token_source = admin_token(&mut settings)?;
        let settings = Arc::new(settings);

        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let addr = listener.local_addr()?;

        // The embedded sandbox plays every provider whose URL is not configured.
        let sandbox = if settings.plaid.base_url.is_empty()
            || settings.bank.base_url.is_empty()
            || settings.stripe.base_url.is_empty()
        {
            Some(start_embedded_sandbox(&settings, addr).await?)
        } else {
            None
        };
        let sandbox_url = sandbox.as_ref().map(|(_, handle)| handle.base_url());
        let pick = |configured: &str, sandbox_path: &str| match (&sandbox_url, configured) {
            (Some(url), "") => format!("{url}{sandbox_path}"),
            _ => configured.to_string(),
        };
        let plaid_base_url = pick(&settings.plaid.base_url, "");
        let bank_base_url = pick(&settings.bank.base_url, "/bank");
        let stripe_base_url = pick(&settings.stripe.base_url, "/stripe");
        let plaid = plaid_client(&settings, plaid_base_url)?;
        let mut providers: HashMap<ProviderKind, DynProvider> = HashMap::new();
        providers.insert(ProviderKind::Plaid, plaid.clone());
        let mut cursor_sources: HashMap<ProviderKind, DynCursorSource> = HashMap::new();
        cursor_sources.insert(ProviderKind::Plaid, plaid.clone());

        let dyn_store: Arc<dyn Store> = layer(store.as_dyn());
        let actors = ActorContext::new(
            dyn_store.clone(),
            cursor_sources,
            settings.actors.clone(),
            SyncParams {
                page_size: settings.plaid.sync_page_size,
                window_page_size: settings.plaid.window_page_size,
                page_retries: settings.plaid.page_retries,
                page_retry_delay: settings.plaid.page_retry_delay,
                ..SyncParams::default()
            },
            clock.clone(),
        );
        actors.set_stripe(
            stripe_client(&settings, stripe_base_url)?,
            StripeParams {
                page_size: settings.stripe.page_size,
                catch_up_interval: settings.stripe.catch_up_interval,
                event_retention: settings.stripe.event_retention,
                call_attempts: settings.stripe.call_attempts,
                drift_interval: settings.stripe.drift_check_interval,
                backfill_parallel: settings.stripe.backfill_parallel as usize,
                ..StripeParams::default()
            },
        );
        let registry = Registry::new(actors.clone());
        if let Some(budget) = plaid.sync_budget() {
            let metrics = actors.metrics.clone();
            budget.observe(move |waited| metrics.rate_limit_wait("plaid", "client_budget", waited));
        }
        let (supervisor, _) =
            Actor::spawn(None, Supervisor::new(actors.clone(), registry.clone()), ())
                .await
                .context("spawning the supervisor")?;
        registry.set_supervisor(supervisor.get_cell());
        let readiness = Arc::new(Readiness::new());
        readiness.watch("supervisor", supervisor.get_cell());
        // Outbound alerts: the actors write the outbox and wake this one sender.
        let alerts = match Destinations::from_settings(&settings)? {
            Some(destinations) => {
                let wake = Arc::new(tokio::sync::Notify::new());
                if let Some(alerts) = destinations.alerts() {
                    actors.set_alert_notifier(wake.clone());
                    tracing::info!(
                        receiver = %crate::outbound::origin_of(&alerts.url),
                        "outbound alerts on"
                    );
                }
                let error_wait = destinations.error_wait();
                let sender = Sender::new(dyn_store.clone(), Arc::new(destinations), error_wait)?;
                Some(Arc::new(sender).spawn(wake, clock.clone()))
            }
            None => None,
        };

        let operations =
            operation_registry(&settings, bank_base_url, &actors, dyn_store.clone(), &clock)?;
        let bank_verifier = Arc::new(BankWebhookVerifier::new(
            settings
                .bank
                .webhook_secrets
                .iter()
                .map(|s| s.expose_secret().to_string())
                .collect(),
            settings.bank.webhook_tolerance,
        ));
        let state = AppState {
            ctx: service::Context {
                clock: clock.clone(),
                store: AsyncStore::new(dyn_store),
                metrics: actors.metrics.clone(),
                registry,
                actors: actors.clone(),
                providers: Arc::new(providers),
                settings: settings.clone(),
                operations,
                bank_verifier,
            },
            shutting_down: Arc::new(AtomicBool::new(false)),
            readiness,
        };

        let sandbox = match sandbox {
            Some((sandbox, handle)) => {
                if settings.sandbox.demo_openings > 0 && settings.bank.base_url.is_empty() {
                    start_demo_openings(&state, &sandbox).await?;
                }
                let stripe_demo = if settings.sandbox.demo_stripe_objects > 0
                    && settings.stripe.base_url.is_empty()
                {
                    Some(start_demo_stripe(&state, &sandbox, addr).await?)
                } else {
                    None
                };
                // Demo items only where the sandbox plays Plaid.
                let demo = if settings.sandbox.demo_items > 0 && settings.plaid.base_url.is_empty()
                {
                    Some(start_demo(&state, sandbox).await?)
                } else {
                    None
                };
                Some(EmbeddedSandbox {
                    handle,
                    demo,
                    stripe_demo,
                })
            }
            None => None,
        };
        let (janitor, sweeper) = start_background(&state).await?;
        Ok(App {
            listener,
            addr,
            state,
            sandbox,
            supervisor,
            sweeper,
            store,
            janitor,
            admin_token_source,
            key_source,
            alerts,
        })
    }

    /// The admin API token in effect (configured, read from or generated into
    /// `<data_dir>/admin-token`). In-process clients (tests, benchmarks) use it.
    pub fn admin_token(&self) -> &SecretString {
        match &self.state.ctx.settings.server.admin_token {
            Some(token) => token,
            // `build` resolves the token before the settings are shared; an `App` never
            // exists without one.
            None => unreachable!("App::build resolves the admin token"),
        }
    }

    /// Where the admin token came from (to tell the operator where to find it).
    pub fn admin_token_source(&self) -> &AdminTokenSource {
        &self.admin_token_source
    }

    /// Where the keys sealing the store's secrets came from.
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The embedded sandbox's base URL, when one runs.
    pub fn sandbox_url(&self) -> Option<String> {
        self.sandbox.as_ref().map(|s| s.handle.base_url())
    }

    /// The shared state (tests and benchmarks inspect the registry and store).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then shuts down in order: refuse webhooks,
    /// finish in-flight requests, stop actors, flush the store.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let App {
            listener,
            addr,
            state,
            mut sandbox,
            supervisor,
            sweeper,
            store,
            janitor,
            admin_token_source: _,
            key_source: _,
            alerts,
        } = self;
        tracing::info!(%addr, "acctor listening");
        let app = router(state.clone());
        let (stop_http, http_stop) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.await;
                })
                .into_future(),
        );
        let served = tokio::select! {
            () = shutdown => None,
            ended = &mut server => Some(ended),
        };
        // From here webhooks get 503 + Retry-After and /readyz fails, but the listener
        // stays open while the syncs drain: load balancers and providers see a clear
        // "not now", and nothing is acknowledged that is not on disk.
        state.shutting_down.store(true, Ordering::SeqCst);
        tracing::info!("shutdown requested, draining");
        let mut background = vec![janitor];
        // Undelivered alerts stay in the outbox for the next start.
        background.extend(alerts);
        background.extend(sandbox.as_mut().and_then(|s| s.demo.take()));
        background.extend(sandbox.as_mut().and_then(|s| s.stripe_demo.take()));
        for task in &background {
            task.abort();
        }
        // Before the actors: a pass must not activate what shutdown is stopping.
        let _ = sweeper
            .stop_and_wait(None, Some(state.ctx.settings.actors.call_timeout))
            .await;
        // Running syncs commit within `actors.shutdown_grace` or are abandoned; no new
        // one starts. The embedded sandbox stays up for them until this returns.
        // Operation steps likewise (a step abandoned wrote nothing; its timer is due).
        let grace = state.ctx.settings.actors.shutdown_grace;
        tokio::join!(
            state.ctx.registry.shutdown(),
            state.ctx.operations.shutdown(grace)
        );
        let _ = supervisor
            .stop_and_wait(None, Some(state.ctx.settings.actors.call_timeout))
            .await;
        let _ = stop_http.send(());
        let served = match served {
            Some(ended) => ended,
            None => {
                match tokio::time::timeout(state.ctx.settings.actors.call_timeout, &mut server)
                    .await
                {
                    Ok(ended) => ended,
                    Err(_) => {
                        // Connections still open (a client that never finishes its request):
                        // their requests are refused with 503 anyway.
                        server.abort();
                        let _ = server.await;
                        Ok(Ok(()))
                    }
                }
            }
        };
        if let Some(sandbox) = sandbox {
            sandbox
                .handle
                .shutdown()
                .await
                .context("stopping the embedded sandbox")?;
        }
        store.shutdown().await.context("final flush")?;
        // An aborted task lets go of what it holds only once it is dropped: wait for it.
        for task in background {
            let _ = task.await;
        }
        let release_within = state.ctx.settings.actors.call_timeout;
        drop(state);
        store.release(release_within).await;
        served
            .context("the HTTP server task failed")?
            .context("serving HTTP")?;
        tracing::info!("acctor stopped");
        Ok(())
    }
}

/// Resolves the admin token (configured, or generated into the data dir) and says
/// where it is.
fn admin_token(settings: &mut Settings) -> anyhow::Result<AdminTokenSource> {
    let source = resolve_admin_token(settings).context("setting up the admin token")?;
    match source.path() {
        Some(path) => tracing::info!(path = %path.display(), "admin api token is in this file"),
        None => tracing::info!("admin api token from configuration (server.admin_token)"),
    }
    Ok(source)
}

/// Starts the simulated bank inside the process, its webhooks pointed at `addr`.
async fn start_embedded_sandbox(
    settings: &Settings,
    addr: SocketAddr,
) -> anyhow::Result<(Sandbox, SandboxHandle)> {
    let dir = settings.store.data_dir.join(EMBEDDED_SANDBOX_DIR);
    let config = SandboxConfig {
        client_id: settings.sandbox.client_id.clone(),
        secret: settings.sandbox.secret.expose_secret().to_string(),
        default_webhook_url: Some(webhook_url(settings, addr)),
        seed: settings.sandbox.seed,
        data_dir: Some(dir.clone()),
        // The bank plays the one acctor is configured for: its API key, its webhook
        // secrets (it signs with all of them, as a bank rotating would), acctor's route.
        bank: BankSandboxConfig {
            api_key: settings.bank.api_key.expose_secret().to_string(),
            webhook_url: Some(format!("http://{addr}/webhooks/bank")),
            webhook_secrets: settings
                .bank
                .webhook_secrets
                .iter()
                .map(|s| s.expose_secret().to_string())
                .collect(),
            seed: settings.sandbox.seed,
        },
    };
    let reset = settings.sandbox.reset_demo;
    // File I/O (a reset, the saved state read and rewritten): off the async workers.
    let sandbox = tokio::task::spawn_blocking(move || -> anyhow::Result<Sandbox> {
        if reset && dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("resetting the demo: removing {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), "demo reset: embedded sandbox state removed");
        }
        Sandbox::new(config).context("creating the embedded sandbox")
    })
    .await
    .context("creating the embedded sandbox")??;
    let listener = TcpListener::bind(settings.sandbox.listen)
        .await
        .with_context(|| format!("binding the sandbox on {}", settings.sandbox.listen))?;
    let handle = sandbox.clone().serve(listener).await;
    tracing::info!(url = %handle.base_url(), "embedded sandbox bank listening");
    Ok((sandbox, handle))
}

/// The Plaid client for `base_url`, with its client-side request budget if configured.
fn plaid_client(settings: &Settings, base_url: String) -> anyhow::Result<Arc<PlaidClient>> {
    let mut client = PlaidClient::new(PlaidClientConfig {
        base_url,
        client_id: settings.plaid.client_id.clone(),
        secret: settings.plaid.secret.clone(),
        request_timeout: settings.plaid.request_timeout,
        max_webhook_age: settings.plaid.max_webhook_age,
    })
    .context("building the Plaid client")?;
    if let Some(budget) = RequestBudget::new(
        settings.plaid.sync_budget_per_minute,
        settings.plaid.sync_budget_burst,
    ) {
        client = client.with_sync_budget(Arc::new(budget));
    }
    Ok(Arc::new(client))
}

/// The Stripe client for `base_url`, with the per-account budgets of `[stripe]`.
fn stripe_client(settings: &Settings, base_url: String) -> anyhow::Result<DynStripeApi> {
    let client = StripeClient::new(StripeClientConfig {
        base_url,
        timeout: settings.stripe.request_timeout,
        test_rate: settings.stripe.test_rate,
        live_rate: settings.stripe.live_rate,
    })
    .context("building the Stripe client")?;
    Ok(Arc::new(client))
}

/// The operation actors' registry, over the bank at `base_url`.
fn operation_registry(
    settings: &Settings,
    base_url: String,
    actors: &Arc<ActorContext>,
    store: Arc<dyn Store>,
    clock: &SharedClock,
) -> anyhow::Result<Arc<OperationRegistry>> {
    let bank = BankClient::new(BankClientConfig {
        base_url,
        api_key: settings.bank.api_key.expose_secret().to_string(),
        timeout: settings.bank.request_timeout,
        legacy_timeout: settings.bank.legacy_timeout,
    })
    .context("building the bank client")?;
    let ops = &settings.operations;
    let public_url = if ops.public_url.is_empty() {
        format!("http://{}", settings.server.listen)
    } else {
        ops.public_url.clone()
    };
    Ok(OperationRegistry::new(Arc::new(OperationDeps {
        store: AsyncStore::new(store),
        bank: Arc::new(bank),
        params: OpeningParams {
            poll_interval: ops.poll_interval,
            slow_poll_interval: ops.slow_poll_interval,
            max_step_attempts: ops.max_step_attempts,
            retry_initial: ops.step_retry_initial,
            retry_max: ops.step_retry_max,
            public_url,
            alerts_on: !settings.alerts.url.is_empty(),
        },
        clock: clock.clone(),
        metrics: actors.metrics.clone(),
        passivate_after: settings.actors.passivate_after,
        call_timeout: settings.actors.call_timeout,
        alerts: actors.alert_notifier(),
    })))
}

/// Starts what runs beside the requests: the dedup janitor, restart recovery and the
/// sweeper (watched by `/readyz`).
async fn start_background(
    state: &AppState,
) -> anyhow::Result<(JoinHandle<()>, ractor::ActorRef<SweeperMessage>)> {
    let ctx = &state.ctx;
    let janitor = spawn_dedup_janitor(
        ctx.store.blocking().clone(),
        ctx.settings.store.dedup_ttl,
        ctx.clock.clone(),
    );
    service::recovery::spawn(ctx.clone());
    let (sweeper, _) = Actor::spawn(
        None,
        SweeperActor::with_clock(
            ctx.actors.clone(),
            ctx.registry.clone(),
            ctx.settings.sweeper.clone(),
            ctx.clock.clone(),
        )
        .with_operations(ctx.operations.clone()),
        (),
    )
    .await
    .context("spawning the sweeper")?;
    state.readiness.watch("sweeper", sweeper.get_cell());
    Ok((janitor, sweeper))
}

fn webhook_url(settings: &Settings, addr: SocketAddr) -> String {
    if settings.sandbox.webhook_url.is_empty() {
        format!("http://{addr}/webhooks/plaid")
    } else {
        settings.sandbox.webhook_url.clone()
    }
}

/// The alias of the demo's Stripe account.
const DEMO_STRIPE_ALIAS: &str = "demo-stripe@example.com";

/// Links the demo's Stripe account: a fresh account in the sandbox's Stripe (which
/// lives in memory, so the one a previous run linked is replaced), some objects of every
/// type, its events sent to this acctor; then one change per `demo_tick`.
async fn start_demo_stripe(
    state: &AppState,
    sandbox: &Sandbox,
    addr: SocketAddr,
) -> anyhow::Result<JoinHandle<()>> {
    let settings = &state.ctx.settings.sandbox;
    let previous = state
        .ctx
        .store
        .run(|s| match s.resolve(DEMO_STRIPE_ALIAS)? {
            Resolved::Found(id) => s.get_account(&id),
            _ => Ok(None),
        })
        .await?;
    if let Some(old) = previous {
        accounts::unlink(&state.ctx, &old.id, true)
            .await
            .with_context(|| format!("replacing demo Stripe account {}", old.id))?;
    }
    let stripe = sandbox.stripe().clone();
    let account = stripe.create_account(None);
    stripe.set_webhook_url(
        &account.id,
        Some(format!("http://{addr}/webhooks/stripe/{}", account.id)),
    );
    for object_type in crate::domain::stripe::ObjectType::ALL {
        stripe.generate(
            &account.id,
            object_type,
            settings.demo_stripe_objects as usize,
        );
    }
    let (linked, _) = accounts::link(
        &state.ctx,
        LinkInput {
            provider: ProviderKind::Stripe.as_str().to_string(),
            item_id: account.id.clone(),
            access_token: account.api_key.clone(),
            owner_id: "demo-stripe".to_string(),
            aliases: vec![DEMO_STRIPE_ALIAS.to_string()],
            stripe: Some(crate::service::stripe_link::StripeLinkInput {
                webhook_secrets: vec![account.webhook_secret.clone()],
                ..Default::default()
            }),
        },
    )
    .await
    .context("linking the demo Stripe account")?;
    tracing::info!(account_id = %linked.id, stripe_account = %account.id, alias = DEMO_STRIPE_ALIAS, "demo stripe account linked");
    let tick = settings.demo_tick;
    Ok(tokio::spawn(async move {
        if tick.is_zero() {
            return;
        }
        let mut interval = tokio::time::interval(tick);
        interval.tick().await;
        loop {
            interval.tick().await;
            stripe.mutate(&account.id, 1);
        }
    }))
}

/// Where in the data dir the embedded sandbox keeps its state.
const EMBEDDED_SANDBOX_DIR: &str = "sandbox";

/// Keeps the demo accounts of a previous run whose items the (restored) embedded
/// sandbox still has; links new demo items for the others (a first start, a reset, a
/// sandbox whose state was lost), purging a stale demo account first. Then starts the
/// activity that keeps the demo items, and only them, syncing.
async fn start_demo(state: &AppState, sandbox: Sandbox) -> anyhow::Result<JoinHandle<()>> {
    let settings = &state.ctx.settings.sandbox;
    let mut demo_items = Vec::new();
    for n in 0..settings.demo_items {
        let alias = format!("demo-user-{n}@example.com");
        let key = alias.clone();
        let previous = state
            .ctx
            .store
            .run(move |s| match s.resolve(&key)? {
                Resolved::Found(id) => s.get_account(&id),
                _ => Ok(None),
            })
            .await?;
        if let Some(old) = previous {
            let kept = old.status == LinkStatus::Linked
                && !settings.reset_demo
                && sandbox.item_stats(&old.item_id).is_some();
            if kept {
                tracing::debug!(account_id = %old.id, alias = %alias, "demo account kept");
                demo_items.push(old.item_id);
                continue;
            }
            accounts::unlink(&state.ctx, &old.id, true)
                .await
                .with_context(|| format!("replacing demo account {}", old.id))?;
        }
        let item = sandbox.create_item(settings.demo_history, None);
        let (account, _) = accounts::link(
            &state.ctx,
            LinkInput {
                provider: ProviderKind::Plaid.as_str().to_string(),
                item_id: item.item_id.clone(),
                access_token: item.access_token.clone(),
                owner_id: format!("demo-user-{n}"),
                aliases: vec![alias.clone()],
                stripe: None,
            },
        )
        .await
        .with_context(|| format!("linking demo item {n}"))?;
        tracing::info!(account_id = %account.id, alias = %alias, item_id = %item.item_id, "demo account linked");
        demo_items.push(item.item_id);
    }
    // New demo items are on disk before they are used, not at the next periodic save.
    let saver = sandbox.clone();
    tokio::task::spawn_blocking(move || saver.checkpoint())
        .await
        .context("saving the embedded sandbox")?
        .context("saving the embedded sandbox")?;
    let tick = settings.demo_tick;
    Ok(tokio::spawn(async move {
        if tick.is_zero() {
            return;
        }
        let mut interval = tokio::time::interval(tick);
        interval.tick().await;
        loop {
            interval.tick().await;
            if let Some(item_id) = sandbox.demo_tick(&demo_items).await {
                tracing::debug!(item_id = %item_id, "demo activity: new transaction");
            }
        }
    }))
}

/// The demo's account openings at the embedded sandbox bank, each for its own demo
/// customer and made once per data dir (a customer with an opening is left alone): the
/// Dutch and Belgian ones complete by webhook after a few seconds, the German one goes
/// through the legacy API (the demo switches its market's flag off, unless someone set
/// it), and the French market's webhooks are lost on purpose (a silent market): that
/// one completes at its next poll, or when asked to retry.
async fn start_demo_openings(state: &AppState, sandbox: &Sandbox) -> anyhow::Result<()> {
    use crate::domain::flags::{FlagKey, FlagName};
    use crate::domain::operations::{OperationQuery, Segment};
    use crate::sandbox::MarketUpdate;
    let ctx = &state.ctx;
    let bank = sandbox.bank();
    let plan = [
        ("NL", Segment::Company, "Ada Lovelace BV"),
        ("BE", Segment::Freelancer, "Grace Hopper"),
        ("DE", Segment::Company, "Emmy Noether GmbH"),
        ("FR", Segment::Company, "Sophie Germain SAS"),
    ];
    let count = (ctx.settings.sandbox.demo_openings as usize).min(plan.len());
    for (market, _, _) in &plan[..count] {
        let update = MarketUpdate {
            delay_ms: Some(2_000),
            legacy_delay_ms: Some(1_500),
            silent: Some(*market == "FR"),
            ..MarketUpdate::default()
        };
        bank.set_market(market, update)
            .map_err(|e| anyhow::anyhow!("demo bank settings: {e}"))?;
    }
    let legacy = FlagKey {
        name: FlagName::AccountOpeningAsync,
        market: "DE".to_string(),
        segment: Segment::Company,
    };
    let served = |market: &str| ctx.settings.operations.markets.iter().any(|m| m == market);
    let read = legacy.clone();
    if count > 2 && served("DE") && ctx.store.run(move |s| s.get_flag(&read)).await?.is_none() {
        service::flags::set(
            ctx,
            legacy,
            false,
            "demo".to_string(),
            Some("the demo shows the legacy path in DE".to_string()),
        )
        .await
        .context("setting the demo's flag")?;
    }
    for (n, (market, segment, name)) in plan[..count].iter().enumerate() {
        if !served(market) {
            continue;
        }
        let customer = format!("demo-customer-{n}");
        let query = OperationQuery {
            customer_id: Some(customer.clone()),
            limit: 1,
            ..OperationQuery::default()
        };
        if !service::operations::list(ctx, query).await?.is_empty() {
            continue;
        }
        let created = service::operations::create(
            ctx,
            service::operations::CreateOpening {
                customer_id: customer.clone(),
                market: market.to_string(),
                segment: *segment,
                legal_name: name.to_string(),
                email: None,
                registration_number: None,
                force: false,
                idempotency_key: Some(format!("demo-opening-{n}")),
            },
        )
        .await
        .with_context(|| format!("opening the demo account of {customer}"))?;
        if let service::operations::Created::New(op) = created {
            tracing::info!(operation_id = %op.id, customer = %customer, market, "demo account opening started");
        }
    }
    Ok(())
}

/// Deletes expired dedup records a few times per TTL, so the dedup table holds about one
/// TTL's worth of webhooks however long the server runs.
fn spawn_dedup_janitor(
    store: Arc<dyn Store>,
    ttl: std::time::Duration,
    clock: SharedClock,
) -> JoinHandle<()> {
    let every = (ttl / 4).max(std::time::Duration::from_secs(1));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let store = store.clone();
            let now = clock.now();
            let purged = tokio::task::spawn_blocking(move || store.purge_expired_dedup(now)).await;
            match purged {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(purged = n, "expired dedup records deleted"),
                Ok(Err(error)) => tracing::warn!(%error, "dedup purge failed"),
                Err(error) => tracing::warn!(%error, "dedup purge task failed"),
            }
        }
    })
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
