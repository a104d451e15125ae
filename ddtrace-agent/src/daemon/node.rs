//! Node mode's side of the loop: which processes of the host are traced, and who each one is.
//!
//! Every program started on the host is reported by the kernel at its exec (node mode only) and
//! judged here before it has loaded its libraries; processes running when the agent starts are
//! judged once from `/proc`. A selected process gets its own identity (its `DD_*` environment,
//! its container), which every product reads from [`Identities`]; its forks inherit the
//! selection in the kernel (from their first instruction) and get an identity of their own.

use std::collections::HashMap;

use crate::{
    config::{runtime_language, SettingsInput, StableConfiguration},
    core::{Identities, ProcessIdentity},
    intake::identity::new_runtime_id,
    target::{ancestors, read_environ, refusal, Candidate, Container, Process, SelectionRules, Verdict},
};

/// The node's selection and the selected processes' identities.
pub struct NodeSelection {
    rules: SelectionRules,
    agent_pid: u32,
    /// What runs the agent (`sudo`, a shell): never traced, whatever its environment.
    agent_chain: Vec<u32>,
    pub identities: Identities,
    stable: StableConfiguration,
    /// This daemon's own environment: `DD_ENV` or `DD_TAGS` set on the DaemonSet are the
    /// defaults of processes that do not set their own.
    daemon_env: HashMap<String, String>,
}

/// A process as the selection sees it (see [`NodeSelection::describe`]).
struct Described {
    executable: String,
    cmdline: String,
    /// Its own environment.
    own_environ: HashMap<String, String>,
    /// Its environment with the stable configuration's values below and above it.
    environ: HashMap<String, String>,
}

/// What an exec changed for a traced process.
pub enum ExecJudgement {
    /// Who it is changed: the line to say.
    Changed(String),
    /// It now runs its own tracer: left alone from now on, the line says why.
    Refused(String),
}

/// What to do with one process.
pub enum Judgement {
    Trace {
        process: Process,
        identity: ProcessIdentity,
        reason: &'static str,
    },
    /// Left alone; the line says why (only for processes that asked to be traced).
    Refused(String),
    Ignored,
}

impl NodeSelection {
    pub fn new(rules: SelectionRules, identities: Identities, stable: StableConfiguration) -> Self {
        let agent_pid = std::process::id();
        Self {
            rules,
            stable,
            agent_pid,
            agent_chain: ancestors(agent_pid),
            identities,
            // A service name or version set on the agent names no process.
            daemon_env: std::env::vars().filter(|(k, _)| k != "DD_SERVICE" && k != "DD_VERSION").collect(),
        }
    }

    /// Whether a process can be selected by more than its own `DD_SERVICE` (which the kernel
    /// checks itself at exec): then the daemon must see every new program.
    pub fn selects_beyond_dd_service(&self) -> bool {
        self.rules.all || !self.rules.executables.is_empty() || self.stable.files_exist()
    }

    /// Every process on the host now, by pid.
    pub fn running_processes() -> Vec<u32> {
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        pids.sort_unstable();
        pids
    }

    /// Judges process `pid` by what `/proc` says of it now.
    pub fn judge(&self, pid: u32) -> Judgement {
        if self.agent_chain.contains(&pid) {
            return Judgement::Ignored;
        }
        let Ok(process) = Process::open(pid) else { return Judgement::Ignored };
        let Described { executable, cmdline, own_environ, environ } = self.describe(&process);
        // Every exec of the node comes here: the memory map (an in-process tracer's native
        // module) is read only for the few the rules select.
        let mut candidate =
            Candidate { pid, executable: &executable, cmdline: &cmdline, environ: &environ, mapped_files: &[] };
        let mut verdict = self.rules.judge(&candidate, self.agent_pid);
        let mapped_files: Vec<String>;
        if let Verdict::Selected(_) = verdict {
            mapped_files = process
                .mapped_objects()
                .map(|objects| objects.into_iter().map(|o| o.path.display().to_string()).collect())
                .unwrap_or_default();
            candidate.mapped_files = &mapped_files;
            if let Some(why) = refusal(&candidate, self.agent_pid) {
                verdict = Verdict::Refused(why);
            }
        }
        match verdict {
            Verdict::Selected(reason) => {
                let reason = if reason == "DD_SERVICE is set" && !own_environ.contains_key("DD_SERVICE") {
                    "the stable configuration sets DD_SERVICE"
                } else {
                    reason
                };
                let identity = self.identity_of(&process, environ);
                Judgement::Trace { process, identity, reason }
            }
            Verdict::Refused(why) => Judgement::Refused(format!(
                "node: not tracing pid {pid} ({}): {why}",
                process.comm().unwrap_or_default()
            )),
            Verdict::NotSelected => Judgement::Ignored,
        }
    }

    /// What `/proc` says of a process, with the stable configuration's values around its own
    /// environment (what its tracer would read).
    fn describe(&self, process: &Process) -> Described {
        let own_environ = read_environ(process.pid);
        // Kernel threads have no executable; they are refused when selected by --select-all.
        let executable = std::fs::read_link(format!("/proc/{}/exe", process.pid))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let args = process.cmdline();
        let environ = self.stable.for_process(&args, &own_environ, runtime_language(&executable)).over(&own_environ);
        Described { executable, cmdline: args.join(" "), own_environ, environ }
    }

    /// The identity of a selected process: its own `DD_SERVICE`, `DD_ENV`, `DD_VERSION` and
    /// `DD_TAGS` (else the daemon's, else the service inferred from its command line), a new
    /// runtime id, and its container.
    fn identity_of(&self, process: &Process, environ: HashMap<String, String>) -> ProcessIdentity {
        let config = SettingsInput {
            daemon_env: self.daemon_env.clone(),
            target_env: environ,
            target_cmdline: process.cmdline(),
            target_comm: process.comm(),
            ..Default::default()
        }
        .resolve();
        let container = Container::of(process.pid);
        ProcessIdentity {
            service: config.service.value,
            env: config.env.value,
            version: config.version.value,
            tags: config.tags.value,
            runtime_id: new_runtime_id(),
            entity_id: container.entity_id(),
            container_id: container.id,
        }
    }

    /// A process that opted in and was over before the daemon could read `/proc`: named by what
    /// the kernel read at its exec (its container is unknown then).
    pub fn identity_from_kernel(&self, opt_in: &crate::probes::OptIn) -> ProcessIdentity {
        let optional = |value: &str| (!value.is_empty()).then(|| value.to_string());
        ProcessIdentity {
            service: opt_in.service.clone(),
            env: optional(&opt_in.env).or_else(|| self.daemon_env.get("DD_ENV").cloned()),
            version: optional(&opt_in.version),
            tags: Vec::new(),
            runtime_id: new_runtime_id(),
            container_id: None,
            entity_id: None,
        }
    }

    /// A traced process exec'd: the new program may say another service, or run in another
    /// container (a runtime's shim moves itself into the container's cgroup, then execs).
    /// Returns the line to say when who it is changed.
    pub fn execed(&self, pid: u32) -> Option<ExecJudgement> {
        let process = Process::open(pid).ok()?;
        // The new program may bring its own tracer (`ddtrace-run` execs the app with its
        // bootstrap on PYTHONPATH; an entrypoint script execs `java -javaagent:dd-java-agent`).
        let Described { executable, cmdline, environ, .. } = self.describe(&process);
        let candidate =
            Candidate { pid, executable: &executable, cmdline: &cmdline, environ: &environ, mapped_files: &[] };
        if let Some(why) = refusal(&candidate, self.agent_pid) {
            self.identities.remove(pid);
            return Some(ExecJudgement::Refused(format!(
                "node: not tracing pid {pid} ({}) any more: {why}",
                process.comm().unwrap_or_default()
            )));
        }
        let mut identity = self.identity_of(&process, environ);
        let before = self.identities.get(pid);
        let changed = before.as_deref().is_none_or(|before| {
            let described =
                |i: &ProcessIdentity| (i.service.clone(), i.env.clone(), i.version.clone(), i.entity_id.clone());
            described(before) != described(&identity)
        });
        // The same process: its runtime id stays.
        if let Some(before) = &before {
            identity.runtime_id = before.runtime_id.clone();
        }
        let line = changed.then(|| selected_line(&process, &identity, "after its exec"));
        self.identities.set(pid, identity);
        line.map(ExecJudgement::Changed)
    }
}

/// The line said when a process is selected.
pub fn selected_line(process: &Process, identity: &ProcessIdentity, reason: &str) -> String {
    let mut line = format!(
        "node: tracing pid {} ({}) as service {}",
        process.pid,
        process.comm().unwrap_or_default(),
        identity.service
    );
    if let Some(env) = &identity.env {
        line.push_str(&format!(", env {env}"));
    }
    if let Some(version) = &identity.version {
        line.push_str(&format!(", version {version}"));
    }
    match (&identity.container_id, &identity.entity_id) {
        (Some(id), _) => line.push_str(&format!(", container {}", &id[..id.len().min(12)])),
        (None, Some(entity)) => line.push_str(&format!(", cgroup {entity}")),
        (None, None) => {}
    }
    line.push_str(&format!(" ({reason})"));
    line
}
