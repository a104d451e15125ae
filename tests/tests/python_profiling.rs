//! Python frames in CPU profiles: a pure-Python program under the real sampler, on every CPython
//! the project supports (Debian's static, stripped 3.11, and pyenv's shared 3.8 to 3.13), and
//! the profiles the Datadog test agent received. Each sample must read as the Python program
//! does (`Worker.alpha_loop -> beta_step -> gamma_spin`, with the lines of those functions),
//! including through C calling back into Python (`sorted` with a Python key).

use std::{path::PathBuf, time::Duration};

use ddtrace_tests::{
    agent_process::AgentProcess,
    native_app::NativeApp,
    profiles::{received_profiles, FlatSample},
    test_agent::TestAgent,
    workspace_root,
};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
const SCRIPT: &str = "python_chain.py";

/// Debian's interpreter and pyenv's, by (minor version, path). A missing one fails the test.
fn interpreters() -> Vec<(u32, PathBuf)> {
    let pyenv = std::env::var("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".pyenv"));
    let mut found = vec![(11, PathBuf::from("/usr/bin/python3.11"))];
    for minor in 8..=13 {
        let dir = std::fs::read_dir(pyenv.join("versions"))
            .unwrap_or_else(|e| panic!("pyenv's versions under {}: {e}", pyenv.display()))
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("3.{minor}."))))
            .unwrap_or_else(|| panic!("pyenv has no CPython 3.{minor} under {}", pyenv.display()));
        found.push((minor, dir.join(format!("bin/python3.{minor}"))));
    }
    found
}

/// The sample's Python frames (those of the test script), leaf first, with their lines.
fn script_frames(sample: &FlatSample) -> Vec<(&str, i64)> {
    sample
        .functions
        .iter()
        .zip(&sample.modules)
        .zip(&sample.lines)
        .filter(|((_, module), _)| module.ends_with(SCRIPT))
        .map(|((function, _), line)| (function.as_str(), *line))
        .collect()
}

fn describe(samples: &[FlatSample]) -> String {
    samples
        .iter()
        .take(12)
        .map(|s| {
            s.functions.iter().zip(&s.lines).rev().map(|(f, l)| format!("{f}:{l}")).collect::<Vec<_>>().join(";")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where each function of the script is (first and last line), as the file says.
fn line_range(function: &str) -> (i64, i64) {
    let source = std::fs::read_to_string(workspace_root().join("tests/apps").join(SCRIPT)).unwrap();
    let name = function.rsplit('.').next().unwrap();
    let lines: Vec<&str> = source.lines().collect();
    let start = lines.iter().position(|l| l.trim_start().starts_with(&format!("def {name}("))).unwrap();
    let indent = lines[start].len() - lines[start].trim_start().len();
    let end = (start + 1..lines.len())
        .find(|&i| !lines[i].trim().is_empty() && lines[i].len() - lines[i].trim_start().len() <= indent)
        .unwrap_or(lines.len());
    (start as i64 + 1, end as i64)
}

#[test]
fn python_frames_name_the_code_on_every_supported_cpython() {
    let _serial = ddtrace_tests::serial();
    let script = workspace_root().join("tests/apps").join(SCRIPT);
    let mut failures = Vec::new();
    for (minor, python) in interpreters() {
        let agent = TestAgent::start();
        let mut app = NativeApp::spawn(&python, &[script.to_str().unwrap(), "3"]);
        let pid = app.pid().to_string();
        let url = agent.url();
        let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "py-chain"]);
        daemon.wait_for_stderr("profiling: sampling CPU at 100 Hz", ATTACH_TIMEOUT);
        let stderr = daemon.stderr_text();
        assert!(
            stderr.contains(&format!("python: pid {pid} runs CPython 3.{minor}.")),
            "{}: no line saying Python frames are read:\n{stderr}",
            python.display()
        );
        app.go();
        assert!(app.wait_exit(Duration::from_secs(30)).success());
        let status = daemon.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "daemon exit {status}:\n{}", daemon.stderr_text());
        let samples: Vec<FlatSample> = received_profiles(&agent).iter().flat_map(|p| p.samples()).collect();
        let total: i64 = samples.iter().map(|s| s.values[0]).sum();
        let count = |keep: &dyn Fn(&[(&str, i64)]) -> bool| -> i64 {
            samples.iter().filter(|s| keep(&script_frames(s))).map(|s| s.values[0]).sum()
        };
        // Before 3.11 code objects have no qualified name.
        let alpha = if minor >= 11 { "Worker.alpha_loop" } else { "alpha_loop" };
        let in_chain = count(&|frames| {
            let names: Vec<&str> = frames.iter().rev().map(|(f, _)| *f).collect();
            names.windows(2).any(|w| w == [alpha, "beta_step"])
        });
        let in_gamma = count(&|frames| frames.first().is_some_and(|(f, _)| *f == "gamma_spin"));
        let through_sorted = count(&|frames| {
            let names: Vec<&str> = frames.iter().rev().map(|(f, _)| *f).collect();
            names.windows(3).any(|w| w == ["beta_step", "sort_key", "gamma_spin"])
        });
        let (gamma_first, gamma_last) = line_range("gamma_spin");
        let gamma_lines_right = count(&|frames| {
            frames.first().is_some_and(|(f, line)| *f == "gamma_spin" && (gamma_first..=gamma_last).contains(line))
        });
        let verdict = format!(
            "3.{minor} ({}): {total} samples, {in_chain} in {alpha} -> beta_step, {in_gamma} in gamma_spin \
             ({gamma_lines_right} on its lines {gamma_first}-{gamma_last}), {through_sorted} through sorted()",
            python.display()
        );
        eprintln!("{verdict}");
        // Two busy threads for 3 s at 100 Hz; the VM may lend less.
        let ok = total >= 200
            && in_chain * 100 >= total * 85
            && in_gamma * 100 >= total * 50
            && gamma_lines_right == in_gamma
            && through_sorted > 0;
        if !ok {
            failures.push(format!("{verdict}\n{}", describe(&samples)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn an_interpreter_of_an_unknown_version_is_said_and_profiled_natively() {
    let _serial = ddtrace_tests::serial();
    let pyenv = std::env::var("HOME").map(PathBuf::from).unwrap_or_else(|_| "/root".into()).join(".pyenv/versions");
    let python = std::fs::read_dir(&pyenv)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("3.7.")))
        .unwrap_or_else(|| panic!("pyenv has no CPython 3.7 under {}", pyenv.display()))
        .join("bin/python3.7");
    let agent = TestAgent::start();
    let script = workspace_root().join("tests/apps").join(SCRIPT);
    let mut app = NativeApp::spawn(&python, &[script.to_str().unwrap(), "2"]);
    let pid = app.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "py-old"]);
    daemon.wait_for_stderr("profiling: sampling CPU at 100 Hz", ATTACH_TIMEOUT);
    app.go();
    assert!(app.wait_exit(Duration::from_secs(30)).success());
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let stderr = daemon.stderr_text();
    let line = format!("python: pid {pid}: CPython 3.7 (");
    assert!(
        stderr.lines().any(|l| l.contains(&line) && l.contains("is not a version this agent can read frames of (3.8 to 3.13)")),
        "no line saying why there are no Python frames:\n{stderr}"
    );
    let samples: Vec<FlatSample> = received_profiles(&agent).iter().flat_map(|p| p.samples()).collect();
    let total: i64 = samples.iter().map(|s| s.values[0]).sum();
    assert!(total >= 100, "the profile goes on, with native frames: {total} samples");
    assert!(samples.iter().all(|s| script_frames(s).is_empty()), "no Python frame from a layout we do not know");
    assert!(
        samples.iter().any(|s| s.functions.iter().any(|f| f.starts_with("_PyEval_EvalFrameDefault"))),
        "{}",
        describe(&samples)
    );
}

#[test]
fn samples_in_a_traced_statement_carry_its_span_and_the_python_code_that_ran_it() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let script = workspace_root().join("tests/apps").join(SCRIPT);
    let python = PathBuf::from("/usr/bin/python3.11");
    let mut app = NativeApp::spawn(&python, &[script.to_str().unwrap(), "3", "sql"]);
    let pid = app.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "py-sql"]);
    daemon.wait_for_stderr("profiling: sampling CPU at 100 Hz", ATTACH_TIMEOUT);
    app.go();
    assert!(app.wait_exit(Duration::from_secs(30)).success());
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let span_ids: std::collections::HashSet<u64> =
        agent.spans().iter().filter(|s| s["name"] == "sqlite.query").filter_map(|s| s["span_id"].as_u64()).collect();
    assert!(span_ids.len() > 20, "{} statements traced:\n{}", span_ids.len(), daemon.stderr_text());
    let samples: Vec<FlatSample> = received_profiles(&agent).iter().flat_map(|p| p.samples()).collect();
    let total: i64 = samples.iter().map(|s| s.values[0]).sum();
    let linked: Vec<&FlatSample> = samples.iter().filter(|s| s.num_label("span id").is_some()).collect();
    let linked_count: i64 = linked.iter().map(|s| s.values[0]).sum();
    // The statements hold nearly all the CPU time.
    assert!(linked_count * 100 >= total * 80, "{linked_count} of {total} samples carry a span id");
    for sample in &linked {
        let span_id = sample.num_label("span id").unwrap() as u64;
        assert!(span_ids.contains(&span_id), "span id {span_id} of a sample is no statement the agent received");
    }
    // Code Hotspots: what ran in the span, down to the Python function that issued it.
    let in_python = linked
        .iter()
        .filter(|s| {
            let names: Vec<&str> = script_frames(s).iter().rev().map(|(f, _)| *f).collect();
            names.windows(3).any(|w| w == ["Worker.alpha_loop", "beta_step", "heavy_query"])
        })
        .map(|s| s.values[0])
        .sum::<i64>();
    assert!(
        in_python * 100 >= linked_count * 95,
        "{in_python} of {linked_count} linked samples show alpha_loop -> beta_step -> heavy_query:\n{}",
        describe(&samples)
    );
    agent.assert_checks_passed();
}

/// Runs the chain in `mode` under the agent on `python` for 2 s; the samples received.
fn chain_samples(python: &std::path::Path, mode: &str) -> Vec<FlatSample> {
    let agent = TestAgent::start();
    let script = workspace_root().join("tests/apps").join(SCRIPT);
    let mut app = NativeApp::spawn(python, &[script.to_str().unwrap(), "2", mode]);
    let pid = app.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "py-chain"]);
    daemon.wait_for_stderr("profiling: sampling CPU at 100 Hz", ATTACH_TIMEOUT);
    app.go();
    assert!(app.wait_exit(Duration::from_secs(30)).success());
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    received_profiles(&agent).iter().flat_map(|p| p.samples()).collect()
}

#[test]
fn deep_recursion_keeps_the_innermost_frames_and_says_the_rest_was_cut() {
    let _serial = ddtrace_tests::serial();
    let samples = chain_samples(std::path::Path::new("/usr/bin/python3.11"), "deep");
    let total: i64 = samples.iter().map(|s| s.values[0]).sum();
    let deep: i64 = samples
        .iter()
        .filter(|s| {
            let frames = script_frames(s);
            frames.first().is_some_and(|(f, _)| *f == "gamma_spin")
                && frames.iter().filter(|(f, _)| *f == "recurse").count() >= 60
                && s.functions.iter().any(|f| f == "[more Python frames]")
        })
        .map(|s| s.values[0])
        .sum();
    assert!(deep * 100 >= total * 85, "{deep} of {total} samples deep in recurse, cut and said so:\n{}", describe(&samples));
}

#[test]
fn a_generator_reads_as_called_from_the_loop_that_consumes_it() {
    let _serial = ddtrace_tests::serial();
    let samples = chain_samples(std::path::Path::new("/usr/bin/python3.11"), "gen");
    let total: i64 = samples.iter().map(|s| s.values[0]).sum();
    let in_generator: i64 = samples
        .iter()
        .filter(|s| {
            let names: Vec<&str> = script_frames(s).iter().rev().map(|(f, _)| *f).collect();
            names.windows(3).any(|w| w == ["beta_step", "squares", "gamma_spin"])
        })
        .map(|s| s.values[0])
        .sum();
    assert!(in_generator * 100 >= total * 85, "{in_generator} of {total} samples in beta_step -> squares -> gamma_spin:\n{}", describe(&samples));
}

#[test]
fn a_python_started_by_a_traced_shell_gets_its_frames_once_it_has_loaded_libpython() {
    let _serial = ddtrace_tests::serial();
    let (minor, python) = interpreters().into_iter().find(|(minor, _)| *minor == 12).unwrap();
    let agent = TestAgent::start();
    let script = workspace_root().join("tests/apps").join(SCRIPT);
    // The shell forks and execs the interpreter after the agent attached; pyenv's maps its
    // libpython only after the exec.
    let command = format!("echo ready; read line; echo go | {} {} 2 > /dev/null", python.display(), script.display());
    let mut app = NativeApp::spawn(std::path::Path::new("/bin/sh"), &["-c", &command]);
    let url = agent.url();
    let shell = app.pid().to_string();
    let mut daemon = AgentProcess::start(&["--pid", &shell, "--agent-url", &url, "--service", "py-exec"]);
    daemon.wait_for_stderr("profiling: sampling CPU at 100 Hz", ATTACH_TIMEOUT);
    app.go();
    assert!(app.wait_exit(Duration::from_secs(30)).success());
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let stderr = daemon.stderr_text();
    assert!(stderr.contains(&format!("runs CPython 3.{minor}.")), "the exec'd interpreter was not found:\n{stderr}");
    let samples: Vec<FlatSample> = received_profiles(&agent).iter().flat_map(|p| p.samples()).collect();
    let in_chain: i64 = samples
        .iter()
        .filter(|s| {
            let names: Vec<&str> = script_frames(s).iter().rev().map(|(f, _)| *f).collect();
            names.windows(2).any(|w| w == ["Worker.alpha_loop", "beta_step"])
        })
        .map(|s| s.values[0])
        .sum();
    let total: i64 = samples.iter().map(|s| s.values[0]).sum();
    // Found within 0.2 s of its first samples.
    assert!(
        in_chain * 100 >= total * 80,
        "{in_chain} of {total} samples in Worker.alpha_loop -> beta_step:\n{}",
        describe(&samples)
    );
}
