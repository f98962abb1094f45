//! `drawbridge serve`: wires policy, keys, identity, audit, the API and the bastion.
//!
//! Start order: keys (created on first start), policy (an invalid policy at start is
//! fatal: there is no last good one to keep), the audit checkpoint key (created on first
//! start), audit log (a `service.started` record and a signed checkpoint must be written,
//! or nothing starts), then the listeners. A checkpoint is written every minute while
//! records are written. SIGHUP reloads the policy at once; the watcher also reloads on
//! file changes; either way the new policy decides nothing before its record is on disk.
//! With `[policy] git` the policy is a commit: the watcher and SIGHUP fetch the ref, and a
//! head that does not pass (`policy::git::source`) is refused and recorded once.
//! SIGTERM or Ctrl-C: stop accepting, let open forwards and requests finish for
//! `ssh.shutdown_grace`, write `service.stopped` and a last checkpoint, exit 0.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, AuditEvent, CheckpointKey, Checkpointer};
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::policy::watch::{PolicyStore, ReloadOutcome};

/// How often the policy folder is checked for changes.
const POLICY_POLL: Duration = Duration::from_secs(2);
/// How often the audit log's head is signed (when records were written since).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

pub fn run(config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("drawbridge")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config, args))
}

async fn serve(config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = Arc::new(config);
    let run_api = !args.bastion_only;
    let run_bastion = !args.api_only;
    let ca_dir = config.ca_dir();
    // Installed before anything is announced: a SIGHUP sent as soon as the listeners are
    // printed must reload, not be lost (nor, before tokio's handler, end the process).
    let signals = StopSignals::install();

    if run_api {
        let outcome = crate::issuer::keys::ensure(&ca_dir, &config.ssh.host_names)
            .with_context(|| format!("preparing the keys in {}", ca_dir.display()))?;
        tracing::info!(dir = %ca_dir.display(), ?outcome, "keys ready");
    }

    let policy_dir = config.policies_dir();
    let git_policy = crate::policy::git::config::settings(&config);
    let from_git = git_policy.is_some();
    let opened = match git_policy {
        Some(settings) => {
            let what = format!("{} (ref {})", settings.url, settings.git_ref);
            let opened = tokio::task::spawn_blocking(move || PolicyStore::open_git(settings))
                .await
                .context("opening the policy from Git")?;
            match opened {
                Ok(p) => Ok(p),
                Err(reasons) => {
                    eprintln!("{reasons}");
                    anyhow::bail!(
                        "no policy commit of {what} can be put in force (reasons above); \
                         push a commit that passes (drawbridge policy verify REV) and start again"
                    );
                }
            }
        }
        None => PolicyStore::open(&policy_dir),
    };
    let policy = match opened {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            anyhow::bail!(
                "the policy in {} does not load ({} error(s) above); fix it and start again \
                 (drawbridge policy check {})",
                policy_dir.display(),
                errors.0.len(),
                policy_dir.display()
            );
        }
    };

    let checkpoint_key = CheckpointKey::load_or_create(&ca_dir)
        .with_context(|| format!("preparing the audit checkpoint key in {}", ca_dir.display()))?;
    let state_target = crate::state::connect::from_config(&config, config.ssh.listen.port())?;
    let shared_state = match state_target {
        Some(target) => Some(
            crate::state::wiring::Shared::start(target, &config)
                .await
                .context("preparing the shared state in PostgreSQL ([state] postgres)")?,
        ),
        None => None,
    };
    let audit = match &shared_state {
        Some(s) => s
            .audit()
            .context("opening this replica's audit chain in PostgreSQL")?,
        None => Audit::open(&config.audit_path(), &config.audit.replica)
            .with_context(|| format!("opening the audit log {}", config.audit_path().display()))?,
    };
    audit
        .record(AuditEvent::ServiceStarted {
            version: env!("CARGO_PKG_VERSION").into(),
            api: run_api,
            bastion: run_bastion,
            policy_version: policy.current().version.clone(),
        })
        .await
        .context("the audit log cannot be written; nothing starts without it")?;
    if shared_state.is_some()
        && let Some(dir) = config.audit_path().parent()
    {
        // The chain is in the database; its signed checkpoints stay a local file beside
        // where the log would be.
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the audit checkpoints", dir.display()))?;
    }
    let checkpoints = Checkpointer::new(audit.clone(), checkpoint_key, &config.audit_path())
        .context("opening the audit checkpoints file")?;
    checkpoints
        .write()
        .await
        .context("the first audit checkpoint cannot be written; nothing starts without it")?;

    let shutdown = CancellationToken::new();
    spawn_checkpoints(checkpoints.clone(), shutdown.clone());
    spawn_policy_watch(policy.clone(), audit.clone(), shutdown.clone());
    if let Some(s) = &shared_state {
        s.spawn_leases(config.login.window, shutdown.clone());
    }
    if from_git {
        // A head refused at start (the commit last applied is in force) is recorded now
        // that the log is open.
        reload_recorded(policy.clone(), audit.clone()).await;
    }

    let metrics = Arc::new(crate::api::metrics::Metrics::new());
    let mut tasks = Vec::new();

    if run_bastion {
        let keys = crate::issuer::keys::BastionKeys::load(&ca_dir)
            .with_context(|| format!("loading the bastion keys from {}", ca_dir.display()))?;
        let keys = crate::bastion::BastionKeysInput {
            trusted_user_cas: keys.trusted_user_cas,
            host_key: keys.host_key,
            host_cert: keys.host_cert,
        };
        let listener = TcpListener::bind(config.ssh.listen)
            .await
            .with_context(|| format!("cannot listen on {} (ssh.listen)", config.ssh.listen))?;
        let bastion_metrics = crate::bastion::BastionMetrics::new();
        metrics.register_bastion(bastion_metrics.clone());
        tracing::info!(
            listen = %config.ssh.listen,
            chacha20_poly1305 = russh::cipher::chacha20_poly1305_implementation(),
            "bastion listening"
        );
        let bound = listener.local_addr()?;
        println!("drawbridge: SSH bastion on {bound}");
        // What the API advertises (the ssh_config's Port) is the port bound, also when
        // ssh.listen asked for any free one (port 0).
        Arc::make_mut(&mut config).ssh.listen = bound;
        let cfg = config.ssh.clone();
        // The issuer backdates valid_after by 60 s: a certificate spans max_ttl + 60 s.
        let max = config.certs.max_ttl + crate::issuer::cert_fields::BACKDATING;
        let recording = recording_setup(&config, &ca_dir, run_api)?;
        let parts = crate::bastion::BastionParts {
            listener,
            cfg,
            max_cert_validity: max,
            keys,
            policy: policy.clone(),
            audit: audit.clone(),
            metrics: bastion_metrics,
            shutdown: watch_token(&shutdown),
            recording,
        };
        let bastion_state = shared_state
            .as_ref()
            .map(|s| s.bastion())
            .unwrap_or_default();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::bastion::run_with(parts, bastion_state).await {
                tracing::error!(error = %format!("{e:#}"), "bastion stopped");
            }
        }));
    }

    if run_api {
        let state = crate::api::AppState::with_shared(
            config.clone(),
            policy.clone(),
            audit.clone(),
            metrics.clone(),
            shared_state.as_ref().map(|s| {
                (
                    s.db.clone(),
                    s.limiter.clone() as _,
                    s.used_codes.clone() as _,
                )
            }),
        )
        .context("preparing the API")?;
        let tls = if config.api.tls {
            let (chain, key) =
                crate::issuer::keys::load_tls(&ca_dir).context("loading the TLS certificate")?;
            Some(crate::api::server::tls_config(chain, key)?)
        } else {
            None
        };
        let listener = TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("cannot listen on {} (api.listen)", config.api.listen))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("drawbridge: API on {scheme}://{}", listener.local_addr()?);
        tasks.push(tokio::spawn(crate::api::write_repeats(
            state.clone(),
            shutdown.clone(),
        )));
        let app = crate::api::router(state);
        let (cfg, s, grace) = (
            config.api.clone(),
            shutdown.clone(),
            config.ssh.shutdown_grace,
        );
        tasks.push(tokio::spawn(async move {
            crate::api::server::serve(listener, app, tls, cfg, s, grace).await;
        }));
    }

    wait_for_stop(signals, &shutdown, &policy, &audit).await;
    let grace = config.ssh.shutdown_grace + Duration::from_secs(2);
    for t in tasks {
        let _ = tokio::time::timeout(grace, t).await;
    }
    let stopped = audit
        .record(AuditEvent::ServiceStopped {
            policy_version: policy.current().version.clone(),
        })
        .await;
    if let Err(e) = stopped {
        tracing::error!(error = %e, "could not write service.stopped");
        return Ok(ExitCode::from(1));
    }
    if let Err(e) = checkpoints.write().await {
        tracing::error!(error = %e, "could not write the last audit checkpoint");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Signs the log's head every [`CHECKPOINT_EVERY`] (skipped while nothing was written)
/// until `shutdown`. A failed checkpoint is logged; the next tick tries again.
fn spawn_checkpoints(checkpoints: Checkpointer, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    if let Err(e) = checkpoints.write_if_new().await {
                        tracing::error!(error = %e, "could not write an audit checkpoint");
                    }
                }
            }
        }
    });
}

/// SIGTERM and SIGHUP, listened to from the start of `serve`.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Option<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(hup)) => Some(StopSignals { term, hup }),
            _ => None,
        }
    }
}

/// Blocks until SIGTERM or Ctrl-C; SIGHUP reloads the policy meanwhile.
async fn wait_for_stop(
    signals: Option<StopSignals>,
    shutdown: &CancellationToken,
    policy: &Arc<PolicyStore>,
    audit: &Audit,
) {
    let Some(StopSignals { mut term, mut hup }) = signals else {
        tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the policy");
                reload_recorded(policy.clone(), audit.clone()).await;
            }
        }
    }
    tracing::info!("stopping: no new connections; open ones may finish");
    shutdown.cancel();
}

/// A `watch` receiver that turns true when `token` is cancelled (the bastion's shape).
fn watch_token(token: &CancellationToken) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let token = token.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        let _ = tx.send(true);
        // Keep the sender alive until every receiver is gone.
        tx.closed().await;
    });
    rx
}

fn spawn_policy_watch(policy: Arc<PolicyStore>, audit: Audit, shutdown: CancellationToken) {
    let handle = tokio::runtime::Handle::current();
    let poll = policy.git_poll().unwrap_or(POLICY_POLL);
    let watcher = policy.spawn_watcher_with(
        poll,
        move |outcome| commit_reload(&handle, &audit, outcome),
        log_reload,
    );
    tokio::spawn(async move {
        shutdown.cancelled().await;
        watcher.abort();
    });
}

/// Reloads the policy now (SIGHUP): the outcome's record (`policy.reloaded`,
/// `policy.rejected`) is on disk before a new policy decides anything, and a reload
/// whose record cannot be written is refused (the old policy stays).
pub async fn reload_recorded(policy: Arc<PolicyStore>, audit: Audit) -> ReloadOutcome {
    let handle = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        policy.reload_with(|o| commit_reload(&handle, &audit, o))
    });
    match task.await {
        Ok(outcome) => {
            log_reload(outcome.clone());
            outcome
        }
        Err(e) => {
            tracing::error!(error = %e, "policy reload task failed; the policy in force stays");
            ReloadOutcome::Unchanged
        }
    }
}

/// Runs on the reload's blocking thread, before the outcome takes effect: writes its
/// record and waits until it is on disk.
fn commit_reload(
    handle: &tokio::runtime::Handle,
    audit: &Audit,
    outcome: &ReloadOutcome,
) -> Result<(), String> {
    let Some(event) = reload_event(outcome) else {
        return Ok(());
    };
    handle.block_on(audit.record(event)).map_err(|e| {
        tracing::error!(error = %e, "could not audit a policy reload");
        e.to_string()
    })
}

fn reload_event(outcome: &ReloadOutcome) -> Option<AuditEvent> {
    match outcome {
        ReloadOutcome::Unchanged
        | ReloadOutcome::Refused { .. }
        | ReloadOutcome::Unavailable { .. } => None,
        ReloadOutcome::Applied {
            old_version,
            new_version,
            signed_by,
        } => Some(AuditEvent::PolicyReloaded {
            old_version: old_version.clone(),
            policy_version: new_version.clone(),
            signed_by: signed_by.clone(),
        }),
        ReloadOutcome::CommitRejected {
            kept_version,
            commit,
            reason,
            errors,
        } => Some(AuditEvent::PolicyRejected {
            policy_version: kept_version.clone(),
            errors: errors.clone(),
            reason: Some(*reason),
            commit: Some(commit.clone()),
        }),
        ReloadOutcome::Rejected {
            kept_version,
            errors,
        } => {
            let list: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
            Some(AuditEvent::PolicyRejected {
                policy_version: kept_version.clone(),
                errors: list,
                reason: None,
                commit: None,
            })
        }
    }
}

fn log_reload(outcome: ReloadOutcome) {
    match outcome {
        ReloadOutcome::Unchanged => {}
        ReloadOutcome::Applied {
            old_version,
            new_version,
            signed_by,
        } => tracing::info!(%old_version, %new_version, ?signed_by, "policy reloaded"),
        ReloadOutcome::CommitRejected {
            kept_version,
            commit,
            reason,
            errors,
        } => tracing::error!(
            kept = %kept_version,
            %commit,
            %reason,
            errors = %errors.join("; "),
            "policy commit refused; keeping the commit in force"
        ),
        ReloadOutcome::Unavailable {
            kept_version,
            reason,
        } => tracing::warn!(
            kept = %kept_version,
            %reason,
            "cannot fetch the policy; keeping the commit in force (tried again at the next poll)"
        ),
        ReloadOutcome::Rejected {
            kept_version,
            errors,
        } => {
            let list: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
            tracing::error!(kept = %kept_version, errors = %list.join("; "), "policy change rejected; keeping the last good policy");
        }
        ReloadOutcome::Refused {
            kept_version,
            new_version,
            reason,
        } => tracing::error!(
            kept = %kept_version,
            refused = %new_version,
            %reason,
            "policy change not applied: its policy.reloaded record could not be written; \
             keeping the policy in force (retried at the next poll)"
        ),
    }
}

/// What the bastion records sessions with. With the issuer in the same process: the user
/// CA signs per-session certificates and the host CA the inner host certificates. A
/// `--bastion-only` process records only with `ca/session_ca` and
/// `ca/recorded_host_key` + `-cert.pub` (from `ca sign-host`); without them it refuses
/// the sessions the policy says to record.
fn recording_setup(
    config: &Config,
    ca_dir: &std::path::Path,
    with_issuer: bool,
) -> anyhow::Result<Option<crate::bastion::recorded::Setup>> {
    use crate::bastion::recorded::{RecordingKeys, Setup, seam};
    // The folder is made (0700) by the first recorded session, not here: a service whose
    // policy records nothing leaves no empty folder behind, and one that cannot make it
    // refuses that session with `recording-unavailable`.
    let dir = seam::recording_dir(config);
    let keys = if with_issuer {
        let k = crate::issuer::IssuerKeys::load(ca_dir)
            .with_context(|| format!("loading the CA keys from {}", ca_dir.display()))?;
        RecordingKeys::in_process(k.user_ca, k.host_ca).map_err(anyhow::Error::msg)?
    } else {
        match RecordingKeys::bastion_only(ca_dir) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "recorded sessions will be refused");
                return Ok(None);
            }
        }
    };
    Ok(Some(Setup {
        keys,
        dir,
        input: seam::record_input(config),
    }))
}
