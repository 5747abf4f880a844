//! The composition root: builds the ledger, the agent runners and the service, connects to NATS,
//! starts the worker and the sidecar, and shuts down in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, Acp, Acpx, Backends};
use crate::client::ForgeClient;
use crate::config::{Config, ConfigError};
use crate::domain::{Forge, Settings};
use crate::http;
use crate::ledger::Ledger;

/// The NATS servers, as logs and errors name them (passwords masked).
fn nats_urls(config: &Config) -> String {
    crate::config::mask_url_passwords(&config.nats_url)
}

/// How often a NATS connection that keeps failing is logged again.
const NATS_ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

/// Logs NATS connection events. A connection that keeps failing (async-nats retries several
/// times a second) is logged when it starts failing and then every [`NATS_ERROR_LOG_EVERY`] with
/// the number of failed attempts, not at every attempt.
#[derive(Clone)]
struct NatsEventLog {
    urls: Arc<str>,
    failing: Arc<std::sync::Mutex<Option<(std::time::Instant, u64)>>>,
}

impl NatsEventLog {
    fn new(urls: String) -> NatsEventLog {
        NatsEventLog {
            urls: urls.into(),
            failing: Arc::default(),
        }
    }

    fn event(&self, event: async_nats::Event) {
        let urls = &*self.urls;
        match event {
            async_nats::Event::Connected => {
                let failed = self.failing.lock().expect("not poisoned").take();
                let attempts = failed.map_or(0, |(_, n)| n);
                tracing::info!(nats = urls, failed_attempts = attempts, "connected to NATS");
            }
            async_nats::Event::Disconnected => {
                tracing::warn!(nats = urls, "disconnected from NATS")
            }
            async_nats::Event::ClientError(e) => self.failure(&e.to_string()),
            async_nats::Event::Closed => tracing::debug!(nats = urls, "NATS connection closed"),
            other => tracing::info!(nats = urls, event = %other, "NATS"),
        }
    }

    fn failure(&self, error: &str) {
        let mut failing = self.failing.lock().expect("not poisoned");
        let now = std::time::Instant::now();
        match failing.as_mut() {
            None => {
                *failing = Some((now, 1));
                tracing::warn!(nats = &*self.urls, error, "cannot reach NATS; retrying");
            }
            Some((last, attempts)) => {
                *attempts += 1;
                if now.duration_since(*last) >= NATS_ERROR_LOG_EVERY {
                    *last = now;
                    tracing::warn!(
                        nats = &*self.urls,
                        error,
                        failed_attempts = *attempts,
                        "still cannot reach NATS; retrying"
                    );
                }
            }
        }
    }
}

/// The connection options of the configuration: credentials and the event log.
async fn nats_options(config: &Config, name: &str) -> anyhow::Result<async_nats::ConnectOptions> {
    let log = NatsEventLog::new(nats_urls(config));
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .event_callback(move |event| {
            let log = log.clone();
            async move { log.event(event) }
        });
    if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.nats_token {
        options = options.token(token.clone());
    }
    if let Some(creds) = &config.nats_creds_file {
        options = options.credentials_file(creds).await.map_err(|e| {
            ConfigError::setting(
                "nats_creds_file",
                format!("{}: cannot read the NATS credentials: {e}", creds.display()),
            )
        })?;
    }
    Ok(options)
}

/// Connects to NATS with the configured credentials. Retries in the background when the server
/// is not up yet, and reconnects for ever after a loss.
pub async fn connect_nats(config: &Config, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut options = nats_options(config, name).await?.retry_on_initial_connect();
    let servers = config
        .nats_servers()
        .map_err(|e| ConfigError::setting("nats_url", e))?;
    // async-nats leaves a URL's own user and password out of its login: they go in here, unless
    // nats_user/nats_password are set.
    let in_url = servers
        .iter()
        .find_map(|s| Some((s.username()?.to_string(), s.password()?.to_string())));
    if let (Some((user, password)), None) = (in_url, &config.nats_user) {
        options = options.user_and_password(user, password);
    }
    options
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {}", nats_urls(config)))
}

/// This host's name (in a container: the container's).
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into())
}

/// A worker id that names the host, unique per process.
pub fn worker_id() -> String {
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", hostname(), &short[..8])
}

/// Opens the ledger of `db_path`; a ledger that cannot be opened is a configuration error that
/// names the file and its setting.
async fn open_ledger(config: &Config) -> anyhow::Result<Ledger> {
    let db_path = config.db_path.clone();
    let opened = tokio::task::spawn_blocking(move || Ledger::open(&db_path)).await?;
    opened.map_err(|e| {
        ConfigError::setting(
            "db_path",
            format!(
                "{}: cannot open the ledger: {}",
                config.db_path.display(),
                innermost(&e)
            ),
        )
        .into()
    })
}

/// The last error of a chain: the one that says what went wrong, said once.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// How agent processes are confined, checked against the kernel: `landlock` without it stops
/// startup; `auto` without it says so loudly, at every start.
fn confinement(config: &Config) -> Result<agent::Confinement, ConfigError> {
    let settings = agent::ConfineSettings {
        mode: config.agent_confinement,
        homes: config.agent_homes_dir.clone(),
        read_dirs: config.agent_read_dirs.clone(),
        connect_ports: config.agent_connect_ports.clone(),
        env_names: config.agent_env.clone(),
        // Empty (compose's default): none.
        credentials_file: config
            .agent_credentials_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty()),
        max_file_bytes: config.agent_max_file_bytes,
    };
    let c = agent::Confinement::new(settings).map_err(|e| match e {
        agent::ConfineError::NoLandlock => ConfigError::setting("agent_confinement", e),
        agent::ConfineError::Homes { .. } => ConfigError::setting("agent_homes_dir", e),
    })?;
    match (config.agent_confinement, c.confined()) {
        (crate::config::ConfinementMode::Off, _) => tracing::warn!(
            "agent_confinement is off: agents can read and write whatever this worker's user can \
             (the ledger, the config, every app's sessions) and connect anywhere"
        ),
        (_, false) => tracing::error!(
            "THIS KERNEL HAS NO LANDLOCK: agents run UNCONFINED and can read the ledger, the \
             config and every app's sessions; set agent_confinement = \"landlock\" to refuse to \
             start instead"
        ),
        (_, true) => tracing::info!(landlock_abi = c.abi(), "agents run under Landlock"),
    }
    Ok(c)
}

/// Creates a directory a setting names, or says which setting names one that cannot be made.
fn prepare_dir(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    std::fs::create_dir_all(path).map_err(|e| {
        ConfigError::setting(
            key,
            format!("{}: cannot create the directory: {e}", path.display()),
        )
    })
}

/// Builds the domain service from the configuration.
pub async fn build_forge(config: &Config, worker_id: String) -> anyhow::Result<Arc<Forge>> {
    let ledger = open_ledger(config).await?;
    prepare_dir("acpx_sessions_cwd", &config.acpx_sessions_cwd)?;
    prepare_dir("runs_dir", &config.runs_dir)?;
    agent::confine::hide_worker().context("making the worker not dumpable")?;
    let confinement = Arc::new(confinement(config)?);
    let acpx =
        Acpx::new(config.acpx_bin.clone(), config.acpx_ttl_secs).confined(confinement.clone());
    let forge = Forge::new(
        Settings::from_config(config, worker_id),
        ledger,
        Arc::new(Backends {
            acpx,
            acp: Acp::new(
                confinement.clone(),
                std::time::Duration::from_secs(config.agent_idle_secs),
                std::time::Duration::from_secs(config.permission_timeout_secs),
            ),
        }),
        confinement,
    )
    .context("preparing the sessions and runs directories")?;
    forge.startup_checks().await?;
    Ok(forge)
}

/// How long a worker waits at start for the first check of its agents before it serves (the
/// check goes on in the background past that).
const AGENT_CHECK_START_WAIT: Duration = Duration::from_secs(15);

/// How long a worker or the sidecar waits at start for NATS before going on without it.
const NATS_START_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping worker waits, once it has cancelled what was left, for the replies.
const CANCELLED_REPLY_WAIT: Duration = Duration::from_secs(agent::CANCEL_GRACE.as_secs() + 5);

/// Sends what is still buffered. A flush waits for the server, so it is bounded: with NATS gone,
/// shutdown must not wait for its return.
async fn flush(client: &async_nats::Client) {
    if tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS did not take the last messages in time");
    }
}

/// A worker serving the NATS subjects, with its background jobs.
struct RunningWorker {
    forge: Arc<Forge>,
    client: async_nats::Client,
    worker: crate::nats::Worker,
    background: tokio::task::JoinHandle<()>,
    agent_checks: tokio::task::JoinHandle<()>,
    grace: Duration,
    metrics: Option<crate::telemetry::MetricsServer>,
}

/// When a process that starts now stops waiting for NATS.
fn nats_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + NATS_START_WAIT
}

fn time_left(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

async fn start_worker(
    config: &Config,
    nats_deadline: tokio::time::Instant,
) -> anyhow::Result<RunningWorker> {
    let id = worker_id();
    let forge = build_forge(config, id.clone()).await?;
    // Health has the agents from the start, and no check's agent process is still running
    // when the first request comes (unless an agent takes longer to answer than this wait).
    let agent_checks = tokio::spawn({
        let forge = forge.clone();
        async move { forge.keep_agents_checked().await }
    });
    if !forge.agents_checked(AGENT_CHECK_START_WAIT).await {
        tracing::warn!("the agents are still being checked; serving meanwhile");
    }
    let client = connect_nats(config, &format!("clawdforge-worker {id}")).await?;
    let heartbeat = Duration::from_secs(config.stream_heartbeat_secs);
    let worker = crate::nats::start(
        client.clone(),
        forge.clone(),
        &crate::domain::Op::ALL,
        heartbeat,
        config
            .agent_protocol
            .then(|| Duration::from_secs(config.agent_protocol_heartbeat_secs)),
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the NATS service: {e}"))?;
    let background = spawn_lifecycle(config, forge.clone());
    let metrics = worker_metrics(config, &forge).await?;
    // Ready means subscribed: once connected, a flush makes sure the server has the
    // subscriptions. Without NATS yet, the worker subscribes when the connection comes.
    if crate::client::wait_connected(&client, time_left(nats_deadline)).await {
        flush(&client).await;
    } else {
        tracing::warn!(nats = %nats_urls(config), "NATS is not reachable yet; the worker subscribes once it is");
    }
    tracing::info!(worker_id = %id, nats = %nats_urls(config), ledger = %config.db_path.display(), "worker ready");
    Ok(RunningWorker {
        forge,
        client,
        worker,
        background,
        agent_checks,
        grace: Duration::from_secs(config.shutdown_grace_secs),
        metrics,
    })
}

/// The worker's `/metrics` on `metrics_addr`, when set (then the process records metrics).
async fn worker_metrics(
    config: &Config,
    forge: &Arc<Forge>,
) -> anyhow::Result<Option<crate::telemetry::MetricsServer>> {
    let Some(addr) = &config.metrics_addr else {
        return Ok(None);
    };
    let forge = forge.clone();
    let refresh: crate::telemetry::Refresh = Arc::new(move || {
        let forge = forge.clone();
        Box::pin(async move { forge.refresh_gauges().await })
    });
    let metrics = crate::telemetry::Metrics::install();
    let server = crate::telemetry::serve_metrics(addr, metrics, refresh).await;
    let server = server.map_err(|e| {
        ConfigError::setting(
            "metrics_addr",
            format!("cannot serve metrics on {addr}: {e}"),
        )
    })?;
    Ok(Some(server))
}

impl RunningWorker {
    /// Drains: no new requests; in-flight turns and runs get the grace period, then are cancelled
    /// and recorded as interrupted.
    async fn stop(self) {
        let RunningWorker {
            forge,
            client,
            worker,
            background,
            agent_checks,
            grace,
            metrics,
        } = self;
        agent_checks.abort();
        let deadline = tokio::time::Instant::now() + grace;
        // First the ledger: another worker then takes this one's sessions at their next request.
        forge.drain().await;
        let draining = worker.stop_intake().await;
        let tracker = draining.tracker.clone();
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            let cancelled = forge.interrupt_in_flight();
            tracing::warn!(
                in_flight = tracker.len(),
                cancelled,
                "grace period over; cancelling what is left"
            );
            // A cancelled turn answers within a moment (the backend gives the agent a bounded
            // time to stop); give the replies a chance to go out.
            let _ = tokio::time::timeout(CANCELLED_REPLY_WAIT, tracker.wait()).await;
        }
        // Agents this worker started may serve other workers' turns: they end with it.
        forge.wait_for_hosted_turns(deadline).await;
        draining.close_own();
        background.abort();
        match forge
            .stopped("the worker shut down before this finished")
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(interrupted = n, "recorded unfinished work as interrupted"),
            Err(e) => tracing::error!(error = %e, "recording the shutdown"),
        }
        flush(&client).await;
        if let Some(metrics) = metrics {
            metrics.stop().await;
        }
        tracing::info!("worker stopped");
    }
}

/// Runs a worker until `shutdown` completes, then drains: no new requests; in-flight turns and
/// runs get `shutdown_grace_secs`, then are cancelled and recorded as interrupted.
pub async fn run_worker(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let worker = start_worker(&config, nats_deadline()).await?;
    shutdown.await;
    tracing::info!("shutting down: no new requests");
    worker.stop().await;
    Ok(())
}

/// The sidecar's settings; a bad CIDR stops startup here, naming its setting.
fn sidecar_settings(config: &Config) -> anyhow::Result<http::Settings> {
    Ok(http::Settings::from_config(config)?)
}

async fn bind_sidecar(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((config.bind_host.as_str(), config.bind_port))
        .await
        .with_context(|| {
            format!(
                "binding the sidecar to {}:{} (BIND_HOST, BIND_PORT)",
                config.bind_host, config.bind_port
            )
        })
}

/// The sidecar serving HTTP in a task of its own.
struct RunningSidecar {
    client: async_nats::Client,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    grace: Duration,
}

async fn start_sidecar(
    config: &Config,
    settings: http::Settings,
    listener: tokio::net::TcpListener,
    nats_deadline: tokio::time::Instant,
) -> anyhow::Result<RunningSidecar> {
    let addr = listener.local_addr()?;
    let nats = connect_nats(config, "clawdforge-sidecar").await?;
    let mut client = ForgeClient::new(nats.clone(), None);
    client.default_agent_timeout = Duration::from_secs(config.default_timeout_secs);
    // Serving starts once connected, or after a short wait without NATS: then requests answer
    // 503 until the connection is made in the background.
    if !client.wait_connected(time_left(nats_deadline)).await {
        tracing::warn!(nats = %nats_urls(config), "NATS is not reachable yet; serving, and answering 503 until it is");
    }
    let access = Arc::new(settings.access.clone());
    let limits = settings.conn;
    let router = http::router(http::Sidecar::new(client, settings));
    let stop = CancellationToken::new();
    // Said before the first request can be answered, so that the log never lags behind.
    tracing::info!(%addr, nats = %nats_urls(config), "sidecar ready");
    let server = tokio::spawn(http::serve(
        listener,
        router,
        access,
        limits,
        stop.clone().cancelled_owned(),
    ));
    Ok(RunningSidecar {
        client: nats,
        stop,
        server,
        // The workers' grace, and time for the replies of what they cancel then.
        grace: Duration::from_secs(config.shutdown_grace_secs) + Duration::from_secs(10),
    })
}

impl RunningSidecar {
    /// Takes no new connections; the requests in flight get the grace period.
    async fn stop(self) {
        self.stop.cancel();
        let mut server = self.server;
        match tokio::time::timeout(self.grace, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server task failed"),
            Err(_) => {
                tracing::warn!("grace period over; abandoning in-flight HTTP requests");
                server.abort();
            }
        }
        flush(&self.client).await;
        tracing::info!("sidecar stopped");
    }
}

/// Runs the sidecar until `shutdown` completes, then lets the requests in flight finish within
/// the grace period.
pub async fn run_sidecar(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let settings = sidecar_settings(&config)?;
    let listener = bind_sidecar(&config).await?;
    let sidecar = start_sidecar(&config, settings, listener, nats_deadline()).await?;
    shutdown.await;
    tracing::info!("shutting down: no new requests");
    sidecar.stop().await;
    Ok(())
}

/// Runs a worker and a sidecar in one process, talking to each other over NATS as separate
/// processes would; on `shutdown` both stop taking requests and drain together.
pub async fn run_serve(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let settings = sidecar_settings(&config)?;
    let listener = bind_sidecar(&config).await?;
    // One wait for NATS: the sidecar does not wait again for what the worker waited for.
    let deadline = nats_deadline();
    let worker = start_worker(&config, deadline).await?;
    let sidecar = match start_sidecar(&config, settings, listener, deadline).await {
        Ok(sidecar) => sidecar,
        Err(e) => {
            worker.stop().await;
            return Err(e);
        }
    };
    shutdown.await;
    tracing::info!("shutting down: no new requests");
    tokio::join!(sidecar.stop(), worker.stop());
    Ok(())
}

/// The worker's background jobs: its heartbeat, and the sweep (which one worker at a time runs).
fn spawn_lifecycle(config: &Config, forge: Arc<Forge>) -> tokio::task::JoinHandle<()> {
    let heartbeat = Duration::from_secs(config.worker_heartbeat_secs.max(1));
    let sweep = Duration::from_secs(config.sweep_interval_secs.max(1));
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(heartbeat);
        let mut sweeps = tokio::time::interval(sweep);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if let Err(e) = forge.heartbeat().await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                }
                _ = sweeps.tick() => {
                    match forge.sweep().await {
                        Ok(r) if r.closed + r.deleted + r.runs_removed > 0 => {
                            tracing::info!(
                                closed = r.closed,
                                deleted = r.deleted,
                                runs_removed = r.runs_removed,
                                "sweep"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sweep failed"),
                    }
                }
            }
        }
    })
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

// ---- the operators' ledger (tokens, apps, usage: see operator.rs); the container health check

/// Opens the configured ledger for an operator's command (`token`, `app`, `usage`). Minting a
/// token or setting a policy may create the ledger (a new deployment); the others need one, so
/// that a mistyped `DB_PATH` is an error rather than an empty list.
pub(crate) async fn command_ledger(config: &Config, create: bool) -> anyhow::Result<Ledger> {
    if !create && !config.db_path.is_file() {
        let missing = format!("no ledger at {}", config.db_path.display());
        return Err(ConfigError::setting("db_path", missing).into());
    }
    open_ledger(config).await
}

/// `clawdforge agents check`: starts each configured agent as a worker would (confined as a
/// native agent process of the pseudo app `@check`), asks `initialize` and `session/new`, and
/// says what each answered.
pub async fn agents_check(config: &Config) -> anyhow::Result<Vec<agent::check::Report>> {
    prepare_dir("acpx_sessions_cwd", &config.acpx_sessions_cwd)?;
    let root = std::fs::canonicalize(&config.acpx_sessions_cwd)
        .with_context(|| format!("resolving {}", config.acpx_sessions_cwd.display()))?;
    let confinement = Arc::new(confinement(config)?);
    let checker = agent::check::Checker::new(confinement, root);
    let (_, agents) = config.agent_table();
    Ok(checker.check_all(&agents).await)
}

/// How long a health check may take in all.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(8);

/// `clawdforge healthcheck`: whether this host's worker answers on NATS (`$SRV.PING`, with a
/// `worker_id` that names this host), or with `http`, whether the sidecar on `BIND_PORT`
/// answers `GET /healthz` with 200. Answers a line to print on success.
pub async fn healthcheck(config: &Config, http: bool) -> anyhow::Result<String> {
    let check = async {
        if http {
            healthcheck_http(config).await
        } else {
            healthcheck_worker(config).await
        }
    };
    tokio::time::timeout(HEALTHCHECK_TIMEOUT, check)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {HEALTHCHECK_TIMEOUT:?}"))?
}

async fn healthcheck_worker(config: &Config) -> anyhow::Result<String> {
    let servers = config
        .nats_servers()
        .map_err(|e| ConfigError::setting("nats_url", e))?;
    let nats = nats_options(config, "clawdforge-healthcheck")
        .await?
        .connect(servers)
        .await
        .map_err(|e| anyhow::anyhow!("NATS at {} is unreachable: {e}", nats_urls(config)))?;
    let client = ForgeClient::new(nats, None);
    let workers = client
        .ping_workers(Duration::from_secs(2))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let prefix = format!("{}-", hostname());
    match workers
        .iter()
        .filter_map(|w| w.worker_id.as_deref())
        .find(|id| id.starts_with(&prefix))
    {
        Some(id) => Ok(format!("worker {id} answers on NATS")),
        None => anyhow::bail!(
            "no worker of host {} answers on NATS ({} other workers do)",
            hostname(),
            workers.len()
        ),
    }
}

async fn healthcheck_http(config: &Config) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A sidecar bound to every address answers on loopback, which its allowlist always admits.
    let host = match config.bind_host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "::1",
        other => other,
    };
    let mut stream = tokio::net::TcpStream::connect((host, config.bind_port))
        .await
        .with_context(|| format!("connecting to the sidecar at {host}:{}", config.bind_port))?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(format!("sidecar healthy: {body}"))
    } else {
        anyhow::bail!("sidecar answered {status:?}: {body}")
    }
}
