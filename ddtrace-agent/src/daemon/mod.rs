//! The daemon's run loop: wires the layers together for one target process and runs until the
//! target exits or the daemon is told to stop, then flushes and detaches.

mod identity;
mod instrumenter;
mod node;
mod privileges;

use std::{collections::HashMap, time::Duration};

pub use instrumenter::{AttachOutcome, InstrumentError, Instrumenter, ProcessOutcome};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::Cli,
    config::{Config, ExporterKind, SettingsInput},
    core::CpuSample,
    core::{ContextTree, EventHub, WallClock},
    intake::identity::ClientIdentity,
    intake::{
        agent_exporter::AgentExporter, console_exporter::ConsoleExporter, profile_exporter::ProfileExporter, TraceSink,
    },
    integrations::{self, streams::StreamLayer, Integration, TracedFunction},
    probes::{KernelEvent, KernelPrograms, ProcessChangeKind, SocketOp, StackSample},
    products::{
        self,
        profiling::{ProfilingInputs, ProfilingSettings},
        remote_config::{RemoteConfigAgent, RemoteConfigInputs, SpeaksFor},
        telemetry::{TelemetryAgent, TelemetryInputs},
        tracing::{TraceTags, TracingSettings},
        ProductConfig, ProductInputs, ProductManager, SharedSummary,
    },
    target::{
        ancestors, descendants, go_build, never_traced, open_tcp_connections, read_environ, runs_go, ConnectionSide,
        ExitWatch, Process, SelectionRules,
    },
};

/// Why the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    TargetExited,
    Signal,
}

/// Resolves settings from the flags, this daemon's environment and the target's.
pub fn resolve_config(cli: &Cli, process: &Process) -> Config {
    SettingsInput {
        cli_service: cli.service.clone(),
        cli_env: cli.env.clone(),
        cli_version: cli.version.clone(),
        cli_agent_url: cli.agent_url.clone(),
        cli_trace_enabled: cli.trace_enabled,
        cli_profiling_enabled: cli.profiling_enabled,
        cli_profiling_frequency: cli.profiling_frequency,
        cli_trace_sample_rate: cli.trace_sample_rate,
        cli_remote_config_poll_interval: cli.remote_config_poll_interval,
        daemon_env: std::env::vars().collect::<HashMap<_, _>>(),
        target_env: read_environ(process.pid),
        target_cmdline: process.cmdline(),
        target_comm: process.comm(),
    }
    .resolve()
}

fn trace_sink(kind: ExporterKind, config: &Config) -> anyhow::Result<Box<dyn TraceSink>> {
    Ok(match kind {
        ExporterKind::Console => Box::new(ConsoleExporter::stdout()),
        ExporterKind::Datadog => Box::new(AgentExporter::new(
            &config.agent_url.value,
            env!("CARGO_PKG_VERSION"),
            &config.service.value,
            config.env.value.as_deref(),
            config.version.value.as_deref(),
        )?),
    })
}

/// Settings of a node agent: its flags and its own environment (each process's identity is its
/// own, see `node`).
fn resolve_node_config(cli: &Cli) -> Config {
    SettingsInput {
        cli_agent_url: cli.agent_url.clone(),
        cli_trace_enabled: cli.trace_enabled,
        cli_trace_sample_rate: cli.trace_sample_rate,
        daemon_env: std::env::vars().collect::<HashMap<_, _>>(),
        target_comm: Some("ddtrace-agent".into()),
        ..Default::default()
    }
    .resolve()
}

/// Runs the agent against `cli.pid` (until the target exits) or the whole node (`--node`), until
/// a signal arrives. `attached` is called once the processes are traced: what only start-up
/// needed can be let go.
pub async fn run(cli: Cli, attached: impl FnOnce()) -> anyhow::Result<StopReason> {
    crate::intake::container_headers::stop_sender_container_headers();
    let missing = privileges::missing_capabilities();
    if !missing.is_empty() {
        anyhow::bail!(
            "missing capabilities: {}; run ddtrace-agent as root (sudo), or grant {}",
            missing.join(", "),
            privileges::GRANT
        );
    }
    // Before anything is attached: a Ctrl-C or a SIGTERM while probes are going in must stop the
    // agent the orderly way (detach, flush), not kill it with its default disposition.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let agent_pid = std::process::id();
    let process = match cli.pid {
        Some(pid) => {
            let process = Process::open(pid)?;
            if let Some(reason) = never_traced(pid, agent_pid) {
                anyhow::bail!("not tracing pid {pid} ({}): {reason}", process.comm().unwrap_or_default());
            }
            Some(process)
        }
        None => None,
    };
    if let (Some(spec), Some(process)) = (&cli.bench_empty_probes, &process) {
        return run_empty_baseline(process, spec, sigint, sigterm).await;
    }
    let config = match &process {
        Some(process) => resolve_config(&cli, process),
        None => resolve_node_config(&cli),
    };
    let identities = if cli.node { crate::core::Identities::required() } else { crate::core::Identities::default() };
    let node = cli.node.then(|| {
        let rules = SelectionRules { all: cli.select_all, executables: cli.select_executables.clone() };
        let stable = crate::config::StableConfiguration::under(&cli.stable_config_dir);
        node::NodeSelection::new(rules, identities.clone(), stable)
    });
    let mut integrations: Vec<Box<dyn Integration>> = integrations::all(cli.sqlite_probes, cli.openssl_probes);
    for spec in &cli.trace_functions {
        integrations.push(Box::new(TracedFunction::parse(spec)?));
    }

    // Every exec reaches the daemon only when it selects by more than DD_SERVICE (which the
    // kernel reads itself): executable names, everything, or stable configuration files.
    let node_execs =
        node.as_ref().map(|node| crate::probes::NodeExecs { every_exec: node.selects_beyond_dd_service() });
    let mut programs = KernelPrograms::load_with(kernel_log_level(), node_execs, cli.python_callers)?;
    let mut reader = programs.take_event_reader()?;
    if let Some(logger) = programs.take_kernel_logger() {
        tokio::spawn(drain_kernel_log(logger));
    }

    let mut hub = EventHub::new();
    let tags = TraceTags {
        service: config.service.value.clone(),
        env: config.env.value.clone(),
        version: config.version.value.clone(),
        tags: config.tags.value.clone(),
        peer_service: config.peer_service(),
    };
    let sink = trace_sink(cli.exporter, &config)?;
    let tracing_settings = TracingSettings {
        enabled: config.trace_enabled.clone(),
        sample_rate: config.trace_sample_rate.clone(),
        tags: config.tags.clone(),
    };
    // Remote configuration and telemetry speak for the target to the Datadog agent, with one
    // identity (one runtime id); with another exporter there is no agent to talk to.
    let identity = (cli.exporter == ExporterKind::Datadog).then(|| client_identity(&config));
    let root_runtime_id = identity.as_ref().map(|identity| identity.runtime_id.clone());
    let profiling_settings = ProfilingSettings {
        enabled: config.profiling_enabled.clone(),
        sampling_frequency_hz: config.profiling_frequency_hz.clone(),
        upload_period_seconds: config.profiling_upload_period.clone(),
    };
    let profile_exporter = match &identity {
        Some(identity) => {
            Some(ProfileExporter::builder(&config.agent_url.value, &config.service.value).identity(identity).build()?)
        }
        None => None,
    };
    let summary = SharedSummary::default();
    let (apm_tracing_tx, mut apm_tracing) = tokio::sync::mpsc::unbounded_channel();
    let mut manager = ProductManager::new(products::registry(ProductInputs {
        trace_tags: tags,
        identities: identities.clone(),
        tracing_settings,
        trace_sink: sink,
        profiling: ProfilingInputs {
            settings: profiling_settings.clone(),
            exporter: profile_exporter,
            output: cli.profile_output.clone(),
            per_process: cli.node.then(|| identities.clone()),
        },
        remote_config: RemoteConfigInputs {
            agent: (cli.exporter == ExporterKind::Datadog).then(|| RemoteConfigAgent {
                agent_url: config.agent_url.value.clone(),
                speaks_for: match &identity {
                    Some(identity) if !cli.node => SpeaksFor::Target(identity.clone()),
                    _ => SpeaksFor::EachService(identities.clone()),
                },
            }),
            enabled: config.remote_config_enabled.clone(),
            poll_interval_seconds: config.remote_config_poll_interval.clone(),
            apm_tracing: apm_tracing_tx,
            summary: summary.clone(),
        },
        telemetry: TelemetryInputs {
            agent: identity.map(|identity| TelemetryAgent { agent_url: config.agent_url.value.clone(), identity }),
            enabled: config.telemetry_enabled.clone(),
            heartbeat_interval_seconds: config.telemetry_heartbeat_interval.clone(),
            daemon_config: daemon_config(&config),
            summary: summary.clone(),
            per_process: cli.node.then(|| identities.clone()),
        },
    }));
    let started = manager.start_all(&mut hub);
    let _ = summary.set(manager.summary());
    // Sampling starts with the product; the processes' samples flow once they are tracked.
    let sampling_cpus = if started.contains(&"profiling") {
        Some(programs.start_cpu_sampling(profiling_settings.sampling_period())?)
    } else {
        None
    };
    let mut contexts = ContextTree::new(WallClock::calibrate(), hub);

    let destination = match cli.exporter {
        ExporterKind::Console => "the console".to_string(),
        ExporterKind::Datadog => format!("the Datadog agent at {}", config.agent_url.value),
    };
    let mut instrumenter = Instrumenter::new(programs, integrations, cli.probe_scope);
    instrumenter.set_span_schema(config.span_attribute_schema.value);
    instrumenter.report_sites = cli.stats.is_some();
    // The protocols on the traced processes' connections (system call tracepoints and TLS
    // plaintext, no library to wait for).
    let mut streams = StreamLayer::new(crate::integrations::wire_protocols(&config));
    let exit_watch = match process {
        Some(process) => {
            eprintln!(
                "ddtrace-agent: tracing pid {} ({}) as service {} ({}), products [{}], traces to {destination}",
                process.pid,
                process.comm().unwrap_or_default(),
                config.service.value,
                config.service.origin.as_str(),
                started.join(", "),
            );
            let root = process.pid;
            let exit_watch = ExitWatch::new(root)?;
            instrument_tree(&mut instrumenter, process, agent_pid)?;
            for pid in instrumenter.process_ids() {
                // The root is who remote configuration and telemetry speak for.
                let runtime_id = root_runtime_id.as_deref().filter(|_| pid == root);
                identities.set(pid, identity::tree_identity(&config, pid, runtime_id));
            }
            manager.post_preload();
            follow_open_connections(&mut instrumenter, &mut streams);
            // The one line that means "traced from now on", whatever the target maps: a static
            // binary (Go) has no library to attach to, so the per-library lines say nothing for it.
            eprintln!(
                "ddtrace-agent: attached: tracing {} process(es) from pid {root}",
                instrumenter.process_ids().len()
            );
            Some((root, exit_watch))
        }
        None => {
            eprintln!(
                "ddtrace-agent: node: tracing every process of this host that sets DD_SERVICE{}{}, now and later; products [{}], traces to {destination}",
                if cli.select_executables.is_empty() { String::new() } else { format!(", or runs {}", cli.select_executables.join(" or ")) },
                if cli.select_all { " (--select-all: every process)" } else { "" },
                started.join(", "),
            );
            let node = node.as_ref().expect("node mode");
            // The host's own libraries, in place before any program starts: through init's
            // root (the host's, from a DaemonSet's pod), else this agent's own (on the host).
            let host = [1, agent_pid]
                .into_iter()
                .find_map(|pid| Process::open(pid).ok().filter(|p| p.mapped_objects().is_ok()));
            if let Some(host) = host {
                print_attach_outcomes(instrumenter.prepare_for(&host));
            }
            for pid in node::NodeSelection::running_processes() {
                select_process(node, &mut instrumenter, pid);
            }
            manager.post_preload();
            follow_open_connections(&mut instrumenter, &mut streams);
            eprintln!("ddtrace-agent: attached: tracing {} process(es) on this node", instrumenter.process_ids().len());
            None
        }
    };
    attached();
    if let Some(cpus) = sampling_cpus {
        eprintln!(
            "ddtrace-agent: profiling: sampling CPU at {} Hz on {cpus} CPUs{}",
            profiling_settings.sampling_frequency_hz.value,
            match &cli.profile_output {
                Some(path) => format!(", whole run to {} at exit", path.display()),
                None => String::new(),
            }
        );
    }

    let mut stats_tick = tokio::time::interval(Duration::from_secs(cli.stats.unwrap_or(3600).max(1)));
    stats_tick.tick().await;
    let mut batch = Vec::with_capacity(crate::probes::MAX_BATCH);
    let mut root_exit_seen = exit_watch.is_none();
    let reason = loop {
        tokio::select! {
            _ = reader.next_batch(&mut batch) => {
                handle_events(&mut batch, &mut instrumenter, &mut contexts, &mut manager, &mut streams, &identities, node.as_ref());
            }
            _ = root_exited(&exit_watch), if !root_exit_seen => {
                root_exit_seen = true;
                let root = exit_watch.as_ref().map(|(root, _)| *root).unwrap_or_default();
                // The kernel's exit event normally comes first; this covers its loss.
                reader.drain_all(&mut batch, |batch| {
                    handle_events(batch, &mut instrumenter, &mut contexts, &mut manager, &mut streams, &identities, node.as_ref())
                });
                if instrumenter.is_tracing(root) {
                    contexts.end_process(root, WallClock::monotonic_now_ns());
                    instrumenter.process_exited(root);
                    identities.remove(root);
                }
            }
            Some(document) = apm_tracing.recv() => manager.apm_tracing_rc(&document),
            _ = sigint.recv() => break StopReason::Signal,
            _ = sigterm.recv() => break StopReason::Signal,
            _ = stats_tick.tick(), if cli.stats.is_some() => {
                eprintln!(
                    "ddtrace-agent: stats: {} {} {} identities={} open_contexts={} context_threads={}",
                    instrumenter.programs().counters().with_events_read(reader.read),
                    instrumenter.state_sizes(),
                    streams.stats(),
                    identities.len(),
                    contexts.open_contexts(),
                    contexts.threads_known(),
                );
            }
        }
        // A node agent runs until stopped, traced processes or not.
        if node.is_none() && !instrumenter.traces_any_process() {
            break StopReason::TargetExited;
        }
    };

    // Events the processes produced before they went away are still in the ring buffer.
    reader.drain_all(&mut batch, |batch| {
        handle_events(batch, &mut instrumenter, &mut contexts, &mut manager, &mut streams, &identities, node.as_ref())
    });
    for pid in instrumenter.process_ids() {
        contexts.end_process(pid, WallClock::monotonic_now_ns());
        instrumenter.process_exited(pid);
    }
    let kernel_counters = instrumenter.programs().counters().with_events_read(reader.read);
    let library_loads = instrumenter.library_events;
    // Detach before the flush: the processes stop paying for probes while we send.
    instrumenter.detach_all(Duration::from_secs(2));
    manager.at_exit(true);
    let root = exit_watch.as_ref().map_or_else(|| "node".to_string(), |(root, _)| root.to_string());
    eprintln!(
        "ddtrace-agent: {} ({root}); kernel: {kernel_counters}; malformed_events={} abandoned_contexts={} library_loads={library_loads}; {}",
        match reason {
            StopReason::TargetExited => "target exited",
            StopReason::Signal => "stopped by signal",
        },
        reader.malformed,
        contexts.abandoned,
        streams.stats(),
    );
    Ok(reason)
}

/// Who remote configuration and telemetry speak for: the target's service, env and version.
fn client_identity(config: &Config) -> ClientIdentity {
    let mut identity = ClientIdentity::new(config.service.value.clone())
        .with_tags(config.tags.value.iter().map(|(k, v)| format!("{k}:{v}")).collect());
    if let Some(env) = &config.env.value {
        identity = identity.with_env(env.clone());
    }
    if let Some(version) = &config.version.value {
        identity = identity.with_app_version(version.clone());
    }
    identity
}

/// The daemon's own settings, for configuration telemetry (the products report theirs).
fn daemon_config(config: &Config) -> ProductConfig {
    let optional = |value: &Option<String>| value.clone().unwrap_or_default();
    ProductConfig::new()
        .with("DD_SERVICE", config.service.value.clone(), config.service.origin)
        .with("DD_ENV", optional(&config.env.value), config.env.origin)
        .with("DD_VERSION", optional(&config.version.value), config.version.origin)
        .with("DD_TRACE_AGENT_URL", config.agent_url.value.clone(), config.agent_url.origin)
        .with("DD_TRACE_HEADER_TAGS", config.header_tags.value.clone(), config.header_tags.origin)
        .with(
            "DD_TRACE_SPAN_ATTRIBUTE_SCHEMA",
            config.span_attribute_schema.value.as_str(),
            config.span_attribute_schema.origin,
        )
}

fn print_attach_outcomes(outcomes: impl IntoIterator<Item = AttachOutcome>) {
    for outcome in outcomes {
        eprintln!("ddtrace-agent: {outcome}");
    }
}

/// The traced processes' runtimes and the connections they already have open, before the line
/// that says they are traced (a query made right after it is on a connection followed already).
fn follow_open_connections(instrumenter: &mut Instrumenter, streams: &mut StreamLayer) {
    for pid in instrumenter.process_ids() {
        note_runtime(instrumenter, streams, pid, None);
    }
    adopt_open_connections(instrumenter, streams);
}

/// Keep-alive connections the traced processes already had (from a load balancer, to their
/// upstreams, a database pool) are followed from their next request on, not only those opened
/// after attach.
fn adopt_open_connections(instrumenter: &mut Instrumenter, streams: &mut StreamLayer) {
    let mut adopted = 0;
    for pid in instrumenter.process_ids() {
        for connection in open_tcp_connections(pid) {
            let accepted = connection.side == ConnectionSide::Accepted;
            match instrumenter.programs_mut().adopt_socket(pid, connection.fd, accepted) {
                Ok(true) => {
                    streams.adopt(pid, connection.fd, accepted, connection.peer);
                    adopted += 1;
                }
                // Followed already: a connection made since the attach.
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, pid, "an open connection will not be followed"),
            }
        }
    }
    if adopted > 0 {
        eprintln!("ddtrace-agent: streams: following {adopted} TCP connections already open, from their next message");
    }
}

/// Traces `process` and the children it forked before we attached (gunicorn workers...); but
/// neither this agent nor what runs it (`sudo ddtrace-agent --pid $$` from a shell).
fn instrument_tree(instrumenter: &mut Instrumenter, process: Process, agent_pid: u32) -> anyhow::Result<()> {
    let root = process.pid;
    for outcome in instrumenter.instrument(process)? {
        eprintln!("ddtrace-agent: {outcome}");
    }
    let agent_chain = ancestors(agent_pid);
    for child in descendants(root) {
        if agent_chain.contains(&child) || never_traced(child, agent_pid).is_some() {
            continue;
        }
        let Ok(child_process) = Process::open(child) else { continue };
        if let Ok(outcomes) = instrumenter.instrument(child_process) {
            eprintln!("ddtrace-agent: tracing child process {child} of {root} too");
            print_attach_outcomes(outcomes.into_iter().filter(|o| !matches!(o, AttachOutcome::Waiting { .. })));
        }
    }
    Ok(())
}

/// Node mode: judges process `pid` and traces it when selected. A process the kernel already
/// follows (a traced process's fork, seen in `/proc` at start) keeps its parent's identity.
fn select_process(node: &node::NodeSelection, instrumenter: &mut Instrumenter, pid: u32) {
    if instrumenter.is_tracing(pid) {
        return;
    }
    match node.judge(pid) {
        node::Judgement::Trace { process, identity, reason } => {
            trace_selected(node, instrumenter, process, identity, reason, false)
        }
        node::Judgement::Refused(line) => eprintln!("ddtrace-agent: {line}"),
        node::Judgement::Ignored => {}
    }
}

fn trace_selected(
    node: &node::NodeSelection,
    instrumenter: &mut Instrumenter,
    process: Process,
    identity: crate::core::ProcessIdentity,
    reason: &str,
    kernel_tracked: bool,
) {
    let pid = process.pid;
    let line = node::selected_line(&process, &identity, reason);
    // Known before the first span can end.
    node.identities.set(pid, identity);
    match instrumenter.instrument(process) {
        Ok(outcomes) => {
            eprintln!("ddtrace-agent: {line}");
            print_attach_outcomes(outcomes.into_iter().filter(|o| !matches!(o, AttachOutcome::Waiting { .. })));
        }
        // Over while being attached. Tracked by the kernel since its exec: its events still in
        // the ring buffer are named by the identity, which its exit event, behind them, removes.
        // Otherwise no event of it will come, and nothing would remove it.
        Err(InstrumentError::Target(crate::target::TargetError::Exited { .. })) => {
            if !kernel_tracked {
                node.identities.remove(pid);
            }
        }
        Err(error) => {
            node.identities.remove(pid);
            eprintln!("ddtrace-agent: node: not tracing pid {pid}: {error}");
        }
    }
}

/// Node mode: a new program the kernel tracked at its exec because it set `DD_SERVICE`. The daemon
/// judges it like any other and untracks one it refuses; one it can no longer read (over, or
/// exiting: its environment is gone) is named by what the kernel read, its events being on
/// their way.
fn select_opted_in(
    node: &node::NodeSelection,
    instrumenter: &mut Instrumenter,
    contexts: &mut ContextTree,
    opt_in: &crate::probes::OptIn,
) {
    let pid = opt_in.tgid;
    if instrumenter.is_tracing(pid) {
        return; // seen in `/proc` at start already
    }
    match node.judge(pid) {
        node::Judgement::Trace { process, identity, reason } => {
            trace_selected(node, instrumenter, process, identity, reason, true)
        }
        node::Judgement::Refused(line) => {
            eprintln!("ddtrace-agent: {line}");
            // What it did since its exec goes (its spans are dropped: it has no identity).
            contexts.end_process(pid, opt_in.ktime_ns);
            instrumenter.process_exited(pid);
        }
        node::Judgement::Ignored => {
            node.identities.set(pid, node.identity_from_kernel(opt_in));
            tracing::debug!(pid, service = %opt_in.service, "node: a selected process was over before it was judged");
        }
    }
}

/// Resolves when `--pid`'s root process exits; never in node mode.
async fn root_exited(watch: &Option<(u32, ExitWatch)>) {
    match watch {
        Some((_, watch)) => watch.exited().await,
        None => std::future::pending().await,
    }
}

/// Hands a batch of kernel events to the instrumenter, in order.
fn handle_events(
    batch: &mut Vec<KernelEvent>,
    instrumenter: &mut Instrumenter,
    contexts: &mut ContextTree,
    manager: &mut ProductManager,
    streams: &mut StreamLayer,
    identities: &crate::core::Identities,
    node: Option<&node::NodeSelection>,
) {
    for event in batch.drain(..) {
        match event {
            KernelEvent::Probe(event) => print_attach_outcomes(instrumenter.handle(&event, contexts)),
            KernelEvent::Process(change) => {
                // Node mode: a program started anywhere on the host is judged at its exec.
                if let (Some(node), ProcessChangeKind::Exec) = (node, &change.kind) {
                    if !instrumenter.is_tracing(change.tgid) {
                        select_process(node, instrumenter, change.tgid);
                        if instrumenter.is_tracing(change.tgid) {
                            note_runtime(instrumenter, streams, change.tgid, None);
                        }
                        continue;
                    }
                }
                // The child is named from the event itself: one already over when the event is
                // read (no process to open) still has its events behind this one. The kernel
                // reports new processes only (threads are told at clone), and the child's exit
                // event removes it.
                if let ProcessChangeKind::Forked { child } = change.kind {
                    identity::inherit(identities, change.tgid, child);
                }
                let (process_outcome, attach_outcomes) = instrumenter.handle_process_change(&change, contexts);
                // A new thread after all (the rare fork the kernel could not tell): no exit event
                // of its own will remove it.
                if let ProcessChangeKind::Forked { child } = change.kind {
                    if process_outcome.is_none() && crate::target::is_process(child) == Some(false) {
                        identities.remove(child);
                    }
                }
                if let ProcessChangeKind::Exited = change.kind {
                    streams.process_exited(change.tgid);
                    // Its last contexts ended in `handle_process_change`.
                    identities.remove(change.tgid);
                }
                if let Some(outcome) = process_outcome {
                    match outcome {
                        ProcessOutcome::Forked { child, .. } => {
                            note_runtime(instrumenter, streams, child, Some(change.tgid))
                        }
                        ProcessOutcome::Execed { pid, .. } => {
                            note_runtime(instrumenter, streams, pid, None);
                            match node.and_then(|node| node.execed(pid)) {
                                Some(node::ExecJudgement::Changed(line)) => eprintln!("ddtrace-agent: {line}"),
                                Some(node::ExecJudgement::Refused(line)) => {
                                    eprintln!("ddtrace-agent: {line}");
                                    contexts.end_process(pid, change.ktime_ns);
                                    instrumenter.process_exited(pid);
                                    streams.process_exited(pid);
                                }
                                None => {}
                            }
                        }
                        ProcessOutcome::Exited { .. } => {}
                    }
                    // A node's processes come and go by the thousand: their forks, execs and
                    // exits are for debugging there.
                    if node.is_some() {
                        tracing::debug!("{outcome}");
                    } else {
                        eprintln!("ddtrace-agent: {outcome}");
                    }
                    if matches!(outcome, ProcessOutcome::Forked { .. }) {
                        // The product protocol's after-fork hook.
                        manager.restart(false);
                    }
                }
                print_attach_outcomes(attach_outcomes);
            }
            KernelEvent::OptIn(opt_in) => match node {
                Some(node) => {
                    select_opted_in(node, instrumenter, contexts, &opt_in);
                    if instrumenter.is_tracing(opt_in.tgid) {
                        note_runtime(instrumenter, streams, opt_in.tgid, None);
                    }
                }
                None => instrumenter.programs_mut().untrack_process(opt_in.tgid),
            },
            KernelEvent::InterpreterStack(stack) => instrumenter.hold_interpreter_frames(stack),
            KernelEvent::StackSample(sample) => {
                let (interpreter, line) = instrumenter.interpreter_frames(sample.tgid, sample.tid, sample.ktime_ns);
                if let Some(line) = line {
                    eprintln!("ddtrace-agent: {line}");
                }
                contexts.cpu_sampled(sample.ktime_ns, core_sample(sample, interpreter))
            }
            KernelEvent::Socket(activity) => {
                // What made an outbound write (the kernel recorded its caller's frames).
                let caller = if activity.op == SocketOp::Sent {
                    let (caller, line) =
                        instrumenter.caller_frames(activity.tgid, activity.tid, activity.ktime_ns, contexts);
                    if let Some(line) = line {
                        eprintln!("ddtrace-agent: {line}");
                    }
                    caller
                } else {
                    None
                };
                streams.on_socket_from(&activity, caller.as_ref(), contexts);
                // Sockets that speak nothing we know: the kernel stops copying their bytes.
                for silent in streams.take_silent() {
                    let programs = instrumenter.programs_mut();
                    if let Err(error) = programs.ignore_socket(silent.tgid, silent.fd, silent.opened_ktime_ns) {
                        tracing::debug!(%error, "streams: a silent socket stays reported");
                    }
                }
            }
        }
    }
}

/// What runs `pid`, newly traced, exec'd or `forked_from` a traced parent: tells the HTTP
/// integration whether it is Go (whose goroutines share OS threads), and the sampler how to walk
/// its interpreter's frames, if any.
fn note_runtime(instrumenter: &mut Instrumenter, streams: &mut StreamLayer, pid: u32, forked_from: Option<u32>) {
    let go = runs_go(pid);
    streams.set_threads_shared(pid, go);
    instrumenter.set_runs_go(pid, go);
    // A forked child runs its parent's program: said once, at the parent's attach or exec.
    if go && forked_from.is_none() {
        if let Some(build) = go_build(pid) {
            // What of its libraries is read, the integrations' own lines say.
            eprintln!("ddtrace-agent: go: pid {pid} runs a program built by {build}: its sockets' traffic is traced");
        }
    }
    if let Some(line) = instrumenter.interpreter_started(pid, forked_from) {
        eprintln!("ddtrace-agent: {line}");
    }
}

fn core_sample(sample: StackSample, interpreter: Option<crate::interpreters::InterpreterFrames>) -> CpuSample {
    CpuSample {
        tgid: sample.tgid,
        tid: sample.tid,
        unix_ns: 0,
        ip: sample.ip,
        sp: sample.sp,
        bp: sample.bp,
        in_kernel: sample.in_kernel,
        stack: sample.stack,
        interpreter,
        active: None,
    }
}

/// `cargo xtask bench`'s baseline: the empty programs on one function, and nothing else.
async fn run_empty_baseline(
    process: &Process,
    spec: &str,
    mut sigint: tokio::signal::unix::Signal,
    mut sigterm: tokio::signal::unix::Signal,
) -> anyhow::Result<StopReason> {
    let (file, symbol) = spec.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("expected FILE:SYMBOL, got {spec}"))?;
    let mut programs = KernelPrograms::load(0)?;
    let host_path = process.host_path(std::path::Path::new(file));
    let location = crate::symbols::ElfSymbols::load(&host_path)?.function_entry(symbol)?;
    programs.attach_empty_baseline(&host_path, location.file_offset, process.pid)?;
    eprintln!("ddtrace-agent: empty baseline probes attached to {symbol} in {file}");
    let exit_watch = ExitWatch::new(process.pid)?;
    tokio::select! {
        _ = exit_watch.exited() => Ok(StopReason::TargetExited),
        _ = sigint.recv() => Ok(StopReason::Signal),
        _ = sigterm.recv() => Ok(StopReason::Signal),
    }
}

/// aya-log's level for kernel diagnostics: off unless `DDTRACE_KERNEL_LOG` asks (0-5).
fn kernel_log_level() -> u8 {
    std::env::var("DDTRACE_KERNEL_LOG").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

async fn drain_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd lives.
    let Ok(mut fd) =
        (unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else { return };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
