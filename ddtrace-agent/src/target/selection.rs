//! Node mode's choice of processes: which ones a node agent traces, and why it leaves some alone.
//!
//! Opt-in by default, as Datadog's unified service tagging is: a process whose environment sets
//! `DD_SERVICE` (what the admission controller injects from a pod's `tags.datadoghq.com/*` labels)
//! is traced. Quick-start rules add processes by executable name, or all of them. Whatever the
//! rules say, some processes are never traced (see [`refusal`]).

use std::collections::HashMap;

use super::tree::never_traced;

/// What the node's flags select, beyond the `DD_SERVICE` opt-in.
#[derive(Debug, Clone, Default)]
pub struct SelectionRules {
    /// Every user process (the refusals still apply).
    pub all: bool,
    /// Executable names (the file name of `/proc/<pid>/exe`), `*` and `?` wildcards allowed.
    pub executables: Vec<String>,
}

/// The verdict on one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Traced, and why (for the line the daemon prints).
    Selected(&'static str),
    /// Not asked for: left alone, silently (most of a node's processes).
    NotSelected,
    /// Asked for but left alone, and why (a line says it).
    Refused(String),
}

/// What is known of a process when it is judged (read from `/proc` by the caller).
pub struct Candidate<'a> {
    pub pid: u32,
    pub executable: &'a str,
    pub cmdline: &'a str,
    pub environ: &'a HashMap<String, String>,
    /// The files it maps now (empty right after its exec).
    pub mapped_files: &'a [String],
}

impl SelectionRules {
    pub fn judge(&self, candidate: &Candidate<'_>, agent_pid: u32) -> Verdict {
        let reason = if candidate.environ.get("DD_SERVICE").is_some_and(|s| !s.is_empty()) {
            "DD_SERVICE is set"
        } else if self.executables.iter().any(|glob| wildcard_match(glob, executable_name(candidate.executable))) {
            "its executable matches --select-exe"
        } else if self.all {
            "--select-all"
        } else {
            return Verdict::NotSelected;
        };
        match refusal(candidate, agent_pid) {
            Some(why) => Verdict::Refused(why),
            None => Verdict::Selected(reason),
        }
    }
}

/// Why a process must be left alone even when selected: the agent itself and what it started,
/// kernel threads, the Datadog agent's own processes (their traffic is the intake's), and a
/// process that already runs an in-process Datadog tracer (two tracers would report every
/// span twice).
pub fn refusal(candidate: &Candidate<'_>, agent_pid: u32) -> Option<String> {
    if let Some(reason) = never_traced(candidate.pid, agent_pid) {
        return Some(reason.to_string());
    }
    if is_datadog_agent(candidate.executable) {
        return Some("it is a Datadog agent process".to_string());
    }
    in_process_tracer(candidate).map(|tracer| format!("it runs an in-process Datadog tracer ({tracer})"))
}

/// The Datadog agent's binaries live under `/opt/datadog-agent` (packages and the official
/// images alike).
fn is_datadog_agent(executable: &str) -> bool {
    executable.starts_with("/opt/datadog-agent/")
}

/// The in-process tracer a process runs or is about to run, by what each one leaves in the
/// environment, the command line or the memory map. Judged at exec, before any library is
/// loaded, the environment and the command line are what tells.
fn in_process_tracer(candidate: &Candidate<'_>) -> Option<&'static str> {
    let env = |name: &str| candidate.environ.get(name).map(String::as_str).unwrap_or("");
    // ddtrace-run puts ddtrace's bootstrap (its sitecustomize) first on PYTHONPATH, then execs
    // the app; before that exec it is `python .../ddtrace-run app`.
    let ddtrace_run =
        candidate.cmdline.split_whitespace().take(3).any(|arg| arg.ends_with("/ddtrace-run") || arg == "ddtrace-run");
    if ddtrace_run || env("PYTHONPATH").split(':').any(|dir| dir.ends_with("ddtrace/bootstrap")) {
        return Some("dd-trace-py, by ddtrace-run");
    }
    let java_options = [candidate.cmdline, env("JAVA_TOOL_OPTIONS"), env("_JAVA_OPTIONS")];
    if java_options.iter().any(|text| text.contains("-javaagent:") && text.contains("dd-java-agent")) {
        return Some("dd-trace-java");
    }
    let node_options = [candidate.cmdline, env("NODE_OPTIONS")];
    if node_options.iter().any(|text| text.contains("dd-trace")) {
        return Some("dd-trace-js");
    }
    // Datadog's single-step instrumentation injects a tracer through this preload.
    if env("LD_PRELOAD").contains("datadog") || env("DD_INJECTION_ENABLED").contains("tracer") {
        return Some("single-step instrumentation");
    }
    // Already running: the tracer's native parts are mapped.
    candidate.mapped_files.iter().find_map(|file| {
        if file.contains("/ddtrace/") {
            Some("dd-trace-py")
        } else if file.contains("Datadog.Trace") {
            Some("dd-trace-dotnet")
        } else if file.ends_with("/ddtrace.so") {
            Some("dd-trace-php")
        } else if file.contains("datadog_") && file.contains("dd-trace-rb") {
            Some("dd-trace-rb")
        } else {
            None
        }
    })
}

fn executable_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Shell-style matching of `*` (any run) and `?` (one character).
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process has: the tree checks find nothing to refuse.
    const NO_PROCESS: u32 = u32::MAX - 1;

    fn candidate<'a>(
        executable: &'a str,
        cmdline: &'a str,
        environ: &'a HashMap<String, String>,
        mapped: &'a [String],
    ) -> Candidate<'a> {
        Candidate { pid: NO_PROCESS, executable, cmdline, environ, mapped_files: mapped }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn dd_service_opts_in_and_nothing_else_does_by_default() {
        let rules = SelectionRules::default();
        let opted = env(&[("DD_SERVICE", "checkout")]);
        assert_eq!(
            rules.judge(&candidate("/usr/bin/python3", "python3 app.py", &opted, &[]), 1),
            Verdict::Selected("DD_SERVICE is set")
        );
        let plain = env(&[("PATH", "/usr/bin")]);
        assert_eq!(rules.judge(&candidate("/usr/bin/python3", "python3 app.py", &plain, &[]), 1), Verdict::NotSelected);
        let empty = env(&[("DD_SERVICE", "")]);
        assert_eq!(rules.judge(&candidate("/usr/bin/python3", "", &empty, &[]), 1), Verdict::NotSelected);
    }

    #[test]
    fn quick_start_rules_select_by_executable_or_everything() {
        let plain = HashMap::new();
        let rules = SelectionRules { all: false, executables: vec!["python3*".into(), "ngin?".into()] };
        assert!(matches!(rules.judge(&candidate("/usr/bin/python3.11", "", &plain, &[]), 1), Verdict::Selected(_)));
        assert!(matches!(rules.judge(&candidate("/usr/sbin/nginx", "", &plain, &[]), 1), Verdict::Selected(_)));
        assert_eq!(rules.judge(&candidate("/usr/bin/bash", "", &plain, &[]), 1), Verdict::NotSelected);
        let all = SelectionRules { all: true, executables: vec![] };
        assert!(matches!(all.judge(&candidate("/usr/bin/bash", "", &plain, &[]), 1), Verdict::Selected(_)));
    }

    #[test]
    fn in_process_tracers_and_the_datadog_agent_are_refused() {
        let rules = SelectionRules::default();
        let refused = |executable: &str, cmdline: &str, environ: HashMap<String, String>, mapped: Vec<String>| {
            let mut environ = environ;
            environ.insert("DD_SERVICE".into(), "svc".into());
            match rules.judge(&candidate(executable, cmdline, &environ, &mapped), 1) {
                Verdict::Refused(why) => why,
                other => panic!("{executable} {cmdline}: {other:?}"),
            }
        };
        let ddtrace_run = env(&[("PYTHONPATH", "/usr/lib/python3/dist-packages/ddtrace/bootstrap:/app")]);
        assert!(refused("/usr/bin/python3", "python3 app.py", ddtrace_run, vec![]).contains("dd-trace-py"));
        let java = "java -javaagent:/opt/dd-java-agent.jar -jar app.jar";
        assert!(refused("/usr/bin/java", java, HashMap::new(), vec![]).contains("dd-trace-java"));
        let node = env(&[("NODE_OPTIONS", "--require dd-trace/init")]);
        assert!(refused("/usr/bin/node", "node app.js", node, vec![]).contains("dd-trace-js"));
        let loaded =
            vec!["/app/venv/lib/python3.11/site-packages/ddtrace/internal/_encoding.cpython-311-x86_64-linux-gnu.so"
                .to_string()];
        assert!(refused("/usr/bin/python3", "python3 app.py", HashMap::new(), loaded).contains("dd-trace-py"));
        assert!(refused("/opt/datadog-agent/embedded/bin/trace-agent", "", HashMap::new(), vec![])
            .contains("Datadog agent"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("gunicorn*", "gunicorn"));
        assert!(wildcard_match("*corn", "gunicorn"));
        assert!(wildcard_match("g*n*n", "gunicorn"));
        assert!(!wildcard_match("g*x", "gunicorn"));
        assert!(!wildcard_match("python", "python3"));
    }
}
