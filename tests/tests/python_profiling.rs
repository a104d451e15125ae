//! Python frames in CPU profiles: a Python program under the real sampler, on every CPython the
//! project supports (Debian's static, stripped 3.11, and pyenv's shared 3.8 to 3.13), and the
//! profiles the Datadog test agent received. Each sample must read as the Python program does
//! (`Worker.alpha_loop -> beta_step -> gamma_spin`, with the lines of those functions), through C
//! calling back into Python (`sorted` with a Python key), generators, deep recursion, traced
//! statements (Code Hotspots) and an interpreter exec'd after the attach.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ddtrace_tests::{
    agent_process::AgentProcess,
    native_app::NativeApp,
    profiles::{received_profiles, FlatSample},
    target_app::pyenv_python,
    test_agent::TestAgent,
    workspace_root,
};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
const SCRIPT: &str = "python_chain.py";
const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

fn script() -> PathBuf {
    workspace_root().join("tests/apps").join(SCRIPT)
}

/// Every interpreter proven, by (minor version, path).
fn interpreters() -> Vec<(u32, PathBuf)> {
    let mut found = vec![(11, PathBuf::from(DEBIAN_PYTHON))];
    found.extend((8..=13).map(|minor| (minor, pyenv_python(minor))));
    found
}

/// What one profiled run left: the samples the agent received, and the daemon's stderr.
struct Run {
    samples: Vec<FlatSample>,
    stderr: String,
    agent: TestAgent,
}

impl Run {
    /// `program args` (printing "ready", then working once told) under the agent until it exits.
    fn of(program: &Path, args: &[&str], service: &str) -> Self {
        let agent = TestAgent::start();
        let mut app = NativeApp::spawn(program, args);
        let pid = app.pid().to_string();
        let url = agent.url();
        let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", service]);
        daemon.wait_for_stderr("profiling: sampling CPU at 100 Hz", ATTACH_TIMEOUT);
        app.go();
        assert!(app.wait_exit(Duration::from_secs(30)).success());
        let status = daemon.wait_exit(Duration::from_secs(20));
        let stderr = daemon.stderr_text();
        assert!(status.success(), "daemon exit {status}:\n{stderr}");
        let samples = received_profiles(&agent).iter().flat_map(|p| p.samples()).collect();
        Self { samples, stderr, agent }
    }

    /// The chain script in `mode` for `seconds`.
    fn chain(python: &Path, seconds: &str, mode: &str) -> Self {
        Self::of(python, &[script().to_str().unwrap(), seconds, mode], "py-chain")
    }

    fn total(&self) -> i64 {
        self.samples.iter().map(|s| s.values[0]).sum()
    }

    /// Samples whose script frames (root first) `keep` accepts.
    fn count(&self, keep: impl Fn(&[(&str, i64)]) -> bool) -> i64 {
        self.samples
            .iter()
            .filter(|s| {
                let mut frames = script_frames(s);
                frames.reverse();
                keep(&frames)
            })
            .map(|s| s.values[0])
            .sum()
    }

    fn describe(&self) -> String {
        self.samples
            .iter()
            .take(12)
            .map(|s| {
                s.functions.iter().zip(&s.lines).rev().map(|(f, l)| format!("{f}:{l}")).collect::<Vec<_>>().join(";")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The sample's frames of the test script, leaf first, with their lines.
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

/// Whether `chain` (root first) are consecutive frames of `frames` (root first).
fn has_chain(frames: &[(&str, i64)], chain: &[&str]) -> bool {
    frames.windows(chain.len()).any(|w| w.iter().map(|(f, _)| *f).eq(chain.iter().copied()))
}

/// Where a function of the script is (first and last line), as the file says.
fn line_range(function: &str) -> (i64, i64) {
    let source = std::fs::read_to_string(script()).unwrap();
    let lines: Vec<&str> = source.lines().collect();
    let start = lines.iter().position(|l| l.trim_start().starts_with(&format!("def {function}("))).unwrap();
    let indent = lines[start].len() - lines[start].trim_start().len();
    let end = (start + 1..lines.len())
        .find(|&i| !lines[i].trim().is_empty() && lines[i].len() - lines[i].trim_start().len() <= indent)
        .unwrap_or(lines.len());
    (start as i64 + 1, end as i64)
}

#[test]
fn python_frames_name_the_code_on_every_supported_cpython() {
    let _serial = ddtrace_tests::serial();
    let (gamma_first, gamma_last) = line_range("gamma_spin");
    let mut failures = Vec::new();
    for (minor, python) in interpreters() {
        let run = Run::chain(&python, "3", "");
        let said = run.stderr.lines().any(|l| l.contains(&format!("runs CPython 3.{minor}")) && l.contains("Python frames"))
            // The kernel's check that a thread state names the sampled thread never refused one.
            && run.stderr.contains(" python_not_this_thread=0 ");
        let total = run.total();
        // Before 3.11 code objects have no qualified name.
        let alpha = if minor >= 11 { "Worker.alpha_loop" } else { "alpha_loop" };
        let in_chain = run.count(|frames| has_chain(frames, &[alpha, "beta_step"]));
        let in_gamma = run.count(|frames| frames.last().is_some_and(|(f, _)| *f == "gamma_spin"));
        let on_its_lines = run.count(|frames| {
            frames.last().is_some_and(|(f, line)| *f == "gamma_spin" && (gamma_first..=gamma_last).contains(line))
        });
        let through_sorted = run.count(|frames| has_chain(frames, &["beta_step", "sort_key", "gamma_spin"]));
        let verdict = format!(
            "3.{minor} ({}): {total} samples, {in_chain} in {alpha} -> beta_step, {in_gamma} in gamma_spin \
             ({on_its_lines} on its lines {gamma_first}-{gamma_last}), {through_sorted} through sorted()",
            python.display()
        );
        eprintln!("{verdict}");
        // Two busy threads for 3 s at 100 Hz; the VM may lend less.
        let ok = said
            && total >= 200
            && in_chain * 100 >= total * 85
            && in_gamma * 100 >= total * 50
            && on_its_lines == in_gamma
            && through_sorted > 0;
        if !ok {
            failures.push(format!("{verdict}; line said: {said}\n{}\n{}", run.describe(), run.stderr));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn an_interpreter_of_an_unknown_version_is_said_and_profiled_natively() {
    let _serial = ddtrace_tests::serial();
    let run = Run::chain(&pyenv_python(7), "2", "");
    assert!(
        run.stderr.lines().any(|l| l.contains(": CPython 3.7 (")
            && l.contains("is not a version this agent can read frames of (3.8 to 3.13)")),
        "no line saying why there are no Python frames:\n{}",
        run.stderr
    );
    assert!(run.total() >= 100, "the profile goes on, with native frames: {} samples", run.total());
    assert!(run.samples.iter().all(|s| script_frames(s).is_empty()), "no Python frame from a layout we do not know");
    assert!(
        run.samples.iter().any(|s| s.functions.iter().any(|f| f.starts_with("_PyEval_EvalFrameDefault"))),
        "{}",
        run.describe()
    );
}

#[test]
fn samples_in_a_traced_statement_carry_its_span_and_the_python_code_that_ran_it() {
    let _serial = ddtrace_tests::serial();
    let run = Run::chain(Path::new(DEBIAN_PYTHON), "3", "sql");
    let span_ids: std::collections::HashSet<u64> = run
        .agent
        .spans()
        .iter()
        .filter(|s| s["name"] == "sqlite.query")
        .filter_map(|s| s["span_id"].as_u64())
        .collect();
    assert!(span_ids.len() > 20, "{} statements traced:\n{}", span_ids.len(), run.stderr);
    let linked: Vec<&FlatSample> = run.samples.iter().filter(|s| s.num_label("span id").is_some()).collect();
    let linked_count: i64 = linked.iter().map(|s| s.values[0]).sum();
    // The statements hold nearly all the CPU time.
    assert!(linked_count * 100 >= run.total() * 80, "{linked_count} of {} samples carry a span id", run.total());
    for sample in &linked {
        let span_id = sample.num_label("span id").unwrap() as u64;
        assert!(span_ids.contains(&span_id), "span id {span_id} of a sample is no statement the agent received");
    }
    // Code Hotspots: what ran in the span, down to the Python function that issued it.
    let in_python: i64 = linked
        .iter()
        .filter(|s| {
            let mut frames = script_frames(s);
            frames.reverse();
            has_chain(&frames, &["Worker.alpha_loop", "beta_step", "heavy_query"])
        })
        .map(|s| s.values[0])
        .sum();
    assert!(
        in_python * 100 >= linked_count * 95,
        "{in_python} of {linked_count} linked samples show alpha_loop -> beta_step -> heavy_query:\n{}",
        run.describe()
    );
    run.agent.assert_checks_passed();
}

#[test]
fn deep_recursion_keeps_the_innermost_frames_and_says_the_rest_was_cut() {
    let _serial = ddtrace_tests::serial();
    let run = Run::chain(Path::new(DEBIAN_PYTHON), "2", "deep");
    // In this mode gamma_spin runs only at the bottom of 150 recursive calls: deeper than the
    // sampler's 64 frames, every such sample must keep the innermost ones and say it was cut.
    let at_the_bottom: Vec<&FlatSample> =
        run.samples.iter().filter(|s| script_frames(s).first().is_some_and(|(f, _)| *f == "gamma_spin")).collect();
    let count: i64 = at_the_bottom.iter().map(|s| s.values[0]).sum();
    assert!(count * 100 >= run.total() * 60, "{count} of {} samples in gamma_spin:\n{}", run.total(), run.describe());
    for sample in at_the_bottom {
        let recursions = script_frames(sample).iter().filter(|(f, _)| *f == "recurse").count();
        let cut = sample.functions.iter().any(|f| f == "[more Python frames]");
        assert!(recursions >= 60 && cut, "{recursions} recurse frames, cut said: {cut}: {:?}", sample.functions);
    }
}

#[test]
fn a_generator_reads_as_called_from_the_loop_that_consumes_it() {
    let _serial = ddtrace_tests::serial();
    let run = Run::chain(Path::new(DEBIAN_PYTHON), "2", "gen");
    // In this mode gamma_spin runs only inside the generator.
    let in_gamma = run.count(|frames| frames.last().is_some_and(|(f, _)| *f == "gamma_spin"));
    let through_generator = run.count(|frames| has_chain(frames, &["beta_step", "squares", "gamma_spin"]));
    assert!(
        in_gamma * 100 >= run.total() * 60,
        "{in_gamma} of {} samples in gamma_spin:\n{}",
        run.total(),
        run.describe()
    );
    assert_eq!(through_generator, in_gamma, "every gamma_spin sample under beta_step -> squares:\n{}", run.describe());
}

#[test]
fn a_python_started_by_a_traced_shell_gets_its_frames_once_it_has_loaded_libpython() {
    let _serial = ddtrace_tests::serial();
    // The shell forks and execs the interpreter after the attach; pyenv's maps its libpython
    // only after the exec, so it is found at its samples.
    let python = pyenv_python(12);
    // Three seconds: a retry every 200 ms may take two rounds (a loaded runner) before it
    // finds the library, and the bar below leaves 20% of the samples for that.
    let command = format!("echo ready; read line; echo go | {} {} 3 > /dev/null", python.display(), script().display());
    let run = Run::of(Path::new("/bin/sh"), &["-c", &command], "py-exec");
    assert!(run.stderr.contains("runs CPython 3.12."), "the exec'd interpreter was not found:\n{}", run.stderr);
    let in_chain = run.count(|frames| has_chain(frames, &["Worker.alpha_loop", "beta_step"]));
    // Found within 0.2 s of its first samples.
    assert!(
        in_chain * 100 >= run.total() * 80,
        "{in_chain} of {} samples in Worker.alpha_loop -> beta_step:\n{}",
        run.total(),
        run.describe()
    );
}

#[test]
fn a_gunicorn_worker_forked_after_the_attach_profiles_with_its_python_frames() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = ddtrace_tests::target_app::Gunicorn::start(2);
    let mut daemon = AgentProcess::attach(server.master_pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    let mut before = std::collections::HashSet::new();
    for _ in 0..400 {
        before.insert(server.request());
        if before.len() >= 2 {
            break;
        }
    }
    // The master forks a new worker after the attach: it inherits the master's interpreter.
    let killed = *before.iter().next().unwrap();
    // SAFETY: plain kill(2) of a gunicorn worker.
    unsafe { libc::kill(killed as i32, libc::SIGKILL) };
    daemon.wait_for_stderr("forked", ATTACH_TIMEOUT);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut new_workers = std::collections::HashSet::new();
    while std::time::Instant::now() < deadline {
        let pid = server.request();
        if !before.contains(&pid) {
            new_workers.insert(pid);
        }
    }
    server.stop();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success(), "{}", daemon.stderr_text());
    let [worker] = new_workers.into_iter().collect::<Vec<_>>()[..] else { panic!("one new worker served") };
    let samples: Vec<FlatSample> = received_profiles(&agent)
        .iter()
        .flat_map(|p| p.samples())
        .filter(|s| s.num_label("thread id") == Some(i64::from(worker)))
        .collect();
    let total: i64 = samples.iter().map(|s| s.values[0]).sum();
    let python = |s: &FlatSample| s.modules.iter().any(|m| m.ends_with(".py"));
    let in_view = |s: &FlatSample| {
        s.functions.iter().zip(&s.modules).any(|(f, m)| f == "serve" && m.ends_with("wsgi_sqlite_app.py"))
    };
    let with_python: i64 = samples.iter().filter(|s| python(s)).map(|s| s.values[0]).sum();
    let in_serve: i64 = samples.iter().filter(|s| in_view(s)).map(|s| s.values[0]).sum();
    let describe = samples.iter().take(8).map(|s| s.functions.iter().rev().cloned().collect::<Vec<_>>().join(";"));
    let describe = describe.collect::<Vec<_>>().join("\n");
    eprintln!("worker {worker}: {total} samples, {with_python} with Python frames, {in_serve} in the view");
    assert!(total >= 20, "only {total} samples of worker {worker}:\n{}", daemon.stderr_text());
    assert!(with_python * 100 >= total * 80, "{with_python} of {total} samples with Python frames:\n{describe}");
    assert!(in_serve > 0, "no sample in the view `serve`:\n{describe}");
}
