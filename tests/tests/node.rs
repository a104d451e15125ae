//! Node mode (`--node`): one agent traces every process of the host that opted in with
//! `DD_SERVICE`, those running when it starts and those started later, each under its own
//! service, env, version and runtime id, in payloads that carry its own container; processes
//! that did not opt in, and those with an in-process tracer, are left alone.

use std::time::Duration;

use ddtrace_tests::{
    agent_process::AgentProcess, container::FakeContainer, target_app::SqliteWorker, test_agent::TestAgent,
    with_resource,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
const INSERT: &str = "INSERT INTO users ( name, secret ) VALUES";

/// `tests/apps/sqlite_once.c`: a process that lives about a millisecond.
fn sqlite_once() -> std::path::PathBuf {
    ddtrace_tests::native_app::build_c(
        "sqlite_once.c",
        "sqlite_once",
        &["-O1", "-Wl,--no-as-needed", "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0"],
    )
}

fn meta<'a>(span: &'a Value, key: &str) -> &'a str {
    span["meta"][key].as_str().unwrap_or_default()
}

#[test]
fn a_node_agent_traces_each_opted_in_service_under_its_own_identity_and_container() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let container_a = FakeContainer::create();
    let container_b = FakeContainer::create();

    // Running before the agent: one service in container A, one process that did not opt in,
    // and one run by ddtrace-run (its bootstrap first on PYTHONPATH), which traces itself.
    let mut alpha = SqliteWorker::spawn_with_prefix(
        &container_a.command_prefix(),
        &[("DD_SERVICE", "alpha"), ("DD_ENV", "prod"), ("DD_VERSION", "1.0")],
    );
    alpha.run("import");
    let mut plain = SqliteWorker::spawn();
    plain.run("import");
    let mut doubled = SqliteWorker::spawn_with_env(&[
        ("DD_SERVICE", "gamma"),
        ("PYTHONPATH", "/usr/local/lib/python3.11/site-packages/ddtrace/bootstrap"),
    ]);
    doubled.run("import");

    let url = agent.url();
    // The agent runs in a container of its own, as in a DaemonSet.
    let agent_container = FakeContainer::create();
    let mut daemon = AgentProcess::start_with_prefix(&agent_container.join_prefix(), &["--node", "--agent-url", &url]);
    daemon.wait_attached(ATTACH_TIMEOUT);

    // Started after the agent, in container B (own pid and mount namespaces): it works at once,
    // judged at its exec before its first statement.
    let mut beta = SqliteWorker::spawn_with_prefix(&container_b.command_prefix(), &[("DD_SERVICE", "beta")]);
    beta.run("work 3");
    for worker in [&mut alpha, &mut plain, &mut doubled] {
        worker.run("work 3");
    }
    let plain_pid = plain.pid();
    let doubled_pid = doubled.pid();
    for worker in [alpha, plain, doubled, beta] {
        worker.exit();
    }

    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| with_resource(spans, INSERT).len() >= 6);
    let stderr = daemon.stderr_text();
    let context = format!("{spans:#?}\n{stderr}");
    // Every statement of both services, none of the others'.
    assert_eq!(with_resource(&spans, INSERT).len(), 6, "3 inserts each for alpha and beta:\n{context}");
    let services: std::collections::BTreeSet<&str> = spans.iter().filter_map(|s| s["service"].as_str()).collect();
    assert_eq!(services.into_iter().collect::<Vec<_>>(), ["alpha", "beta"], "{context}");
    for span in &spans {
        let pid = span["metrics"]["process_id"].as_f64().unwrap_or_default() as u32;
        assert!(pid != plain_pid && pid != doubled_pid, "a span of a process left alone: {span:#}");
    }
    for span in spans.iter().filter(|s| s["service"] == "alpha") {
        assert_eq!((meta(span, "env"), meta(span, "version")), ("prod", "1.0"), "{span:#}");
    }
    for span in spans.iter().filter(|s| s["service"] == "beta") {
        assert_eq!((meta(span, "env"), meta(span, "version")), ("", ""), "beta sets neither: {span:#}");
    }
    // One runtime id per process.
    let runtime_ids = |service: &str| -> std::collections::BTreeSet<String> {
        spans.iter().filter(|s| s["service"] == service).map(|s| meta(s, "runtime-id").to_string()).collect()
    };
    let (alpha_ids, beta_ids) = (runtime_ids("alpha"), runtime_ids("beta"));
    assert!(alpha_ids.len() == 1 && beta_ids.len() == 1 && alpha_ids != beta_ids, "{alpha_ids:?} {beta_ids:?}");
    assert_eq!(alpha_ids.iter().next().unwrap().len(), 36, "a UUID: {alpha_ids:?}");

    // What the daemon said of each.
    let short = |c: &FakeContainer| c.id[..12].to_string();
    assert!(
        stderr.contains(&format!("as service alpha, env prod, version 1.0, container {}", short(&container_a))),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("as service beta, container {}", short(&container_b))), "{stderr}");
    assert!(
        stderr.contains(&format!("not tracing pid {doubled_pid} (python3"))
            && stderr.contains("in-process Datadog tracer (dd-trace-py"),
        "{stderr}"
    );

    // Each service's payloads carry its own container, so the Datadog agent tags them with it.
    let payloads: Vec<_> = agent.requests().into_iter().filter(|r| r.url.contains("/v0.4/traces")).collect();
    for (service, other, container) in [("alpha", "beta", &container_a), ("beta", "alpha", &container_b)] {
        let theirs: Vec<_> = payloads.iter().filter(|r| r.body_contains(INSERT) && r.body_contains(service)).collect();
        assert!(!theirs.is_empty(), "no payload for {service}: {payloads:#?}");
        for payload in theirs {
            assert_eq!(payload.header("Datadog-Container-ID"), Some(container.id.as_str()), "{service}: {payload:?}");
            // Not the agent's own cgroup (libdatadog would add it from /proc/self/cgroup).
            let entity = payload.header("Datadog-Entity-ID");
            assert!(entity.is_none() || entity == Some(&format!("ci-{}", container.id)), "{service}: {payload:?}");
            assert!(!payload.body_contains(other), "{service} and {other} in one payload");
        }
    }
    agent.assert_checks_passed();
    assert!(daemon.is_running(), "a node agent runs until stopped:\n{stderr}");
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success(), "{}", daemon.stderr_text());
}

/// A DaemonSet pod is told where the node's Datadog agent is by `DD_AGENT_HOST` (the node's IP,
/// from the downward API) or by `DD_TRACE_AGENT_URL=unix:///var/run/datadog/apm.socket` (the
/// agent's socket, mounted from the host). Both reach it.
#[test]
fn a_node_agent_reaches_the_datadog_agent_by_host_or_by_socket() {
    let _serial = ddtrace_tests::serial();
    let socket_dir = std::env::temp_dir().join(format!("ddtrace-node-socket-{}", std::process::id()));
    std::fs::create_dir_all(&socket_dir).unwrap();
    let socket = socket_dir.join("apm.socket");
    let agent = TestAgent::start_with_socket(&socket);
    let port = agent.port.to_string();
    let url = format!("unix://{}", socket.display());
    // The test agent listens on its TCP port and on the socket, and nowhere else (not on the
    // default localhost:8126): spans arrive only if the way given was used.
    let ways: [(&str, Vec<(&str, &str)>); 2] = [
        ("host", vec![("DD_AGENT_HOST", "127.0.0.1"), ("DD_TRACE_AGENT_PORT", &port)]),
        ("socket", vec![("DD_TRACE_AGENT_URL", &url)]),
    ];
    for (way, env) in &ways {
        let mut daemon = AgentProcess::start_with_env(&["--node"], env);
        daemon.wait_attached(ATTACH_TIMEOUT);
        let service = format!("by-{way}");
        let mut worker = SqliteWorker::spawn_with_env(&[("DD_SERVICE", &service)]);
        worker.run("work 1");
        worker.exit();
        let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| {
            spans
                .iter()
                .any(|s| s["service"] == service.as_str() && s["resource"].as_str().unwrap_or("").starts_with(INSERT))
        });
        assert!(
            spans.iter().any(|s| s["service"] == service.as_str()),
            "nothing arrived {way}:\n{spans:#?}\n{}",
            daemon.stderr_text()
        );
        daemon.signal(libc::SIGINT);
        assert!(daemon.wait_exit(Duration::from_secs(10)).success(), "{}", daemon.stderr_text());
    }
    agent.assert_checks_passed();
    let _ = std::fs::remove_dir_all(&socket_dir);
}

/// Short-lived selected processes, started one after another (recycled workers, cron-like jobs,
/// CGI): each is judged at its exec and every statement of every one is traced, from a process
/// that lives about a millisecond; once they are gone, the agent holds nothing of any of them
/// (its per-process state, from `--stats`; its memory over 10 minutes is `cargo xtask bench
/// --churn`'s to measure).
#[test]
fn under_churn_no_short_lived_process_is_missed_and_none_is_held_after() {
    const PROCESSES: usize = 300;
    const STATEMENTS: usize = 2;
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let program = sqlite_once();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--node", "--agent-url", &url, "--stats", "1"]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    let mut pids = std::collections::BTreeSet::new();
    // About 1,000 a minute, as recycled PHP-FPM or gunicorn workers come and go.
    for _ in 0..PROCESSES {
        let status = std::process::Command::new(&program)
            .arg(STATEMENTS.to_string())
            .env("DD_SERVICE", "churn")
            .spawn()
            .and_then(|mut child| {
                pids.insert(child.id());
                child.wait()
            })
            .expect("sqlite_once runs");
        assert!(status.success(), "{status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let expected = PROCESSES * STATEMENTS;
    let spans =
        agent.wait_for_spans(Duration::from_secs(10), |spans| with_resource(spans, "SELECT ?").len() >= expected);
    let traced: std::collections::BTreeSet<u32> =
        spans.iter().filter_map(|s| s["metrics"]["process_id"].as_f64()).map(|p| p as u32).collect();
    let missed: Vec<&u32> = pids.difference(&traced).collect();
    if !missed.is_empty() {
        daemon.signal(libc::SIGINT);
        daemon.wait_exit(Duration::from_secs(10));
        let stderr = daemon.stderr_text();
        let about = |pid: &u32| -> Vec<&str> { stderr.lines().filter(|l| l.contains(&pid.to_string())).collect() };
        panic!(
            "{} of {PROCESSES} processes missed: {missed:?}\nwhat the daemon said of the first: {:?}\nspans: {}\n{}",
            missed.len(),
            about(missed[0]),
            with_resource(&spans, "SELECT ?").len(),
            stderr.lines().filter(|l| l.contains("kernel:") || l.contains("flushed")).collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(with_resource(&spans, "SELECT ?").len(), expected, "every statement of every process");
    // Nothing of 300 processes is held once they are gone: the stats line printed after the
    // last one's spans arrived.
    let printed = daemon.stderr_text().lines().filter(|l| l.contains("stats:")).count();
    daemon.wait_for_stderr_count("stats:", printed + 2, ATTACH_TIMEOUT);
    let stderr = daemon.stderr_text();
    let last = stderr.lines().rfind(|l| l.contains("stats:")).unwrap_or_default();
    for held in
        ["processes=0", "announced=0", "foreseen_links=0", "identities=0", "open_contexts=0", "context_threads=0"]
    {
        assert!(last.contains(held), "{held} expected once every process is gone:\n{last}");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success(), "{}", daemon.stderr_text());
}

/// Each selected process is profiled under its own identity: one profile per process, tagged
/// with its service, env and runtime id (the same runtime id as its spans would carry), its
/// container as a tag, never mixed with another service's samples.
#[test]
fn a_node_agent_profiles_each_service_on_its_own() {
    use ddtrace_tests::{
        native_app::{build_c, NativeApp},
        profiles::received_profiles,
    };
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let program = build_c("hot_chain.c", "hot_chain_node", &["-O2", "-fno-omit-frame-pointer"]);
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--node", "--agent-url", &url]);
    daemon.wait_for_stderr("profiling: sampling CPU", ATTACH_TIMEOUT);
    let container = FakeContainer::create();
    // beta runs in a container: its profile says which.
    let in_container = format!("{} '{}' 2", container.join_prefix(), program.display());
    let mut apps = vec![
        NativeApp::spawn_with_env(&program, &["2"], &[("DD_SERVICE", "alpha"), ("DD_ENV", "prod")]),
        NativeApp::spawn_with_env(
            std::path::Path::new("/bin/sh"),
            &["-c", &in_container],
            &[("DD_SERVICE", "beta"), ("DD_ENV", "staging")],
        ),
    ];
    for app in &mut apps {
        app.go();
    }
    for app in &mut apps {
        assert!(app.wait_exit(Duration::from_secs(30)).success());
    }
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(20)).success(), "{}", daemon.stderr_text());
    let profiles = received_profiles(&agent);
    let tags_of = |service: &str| -> Vec<String> {
        profiles
            .iter()
            .map(|p| p.event["tags_profiler"].as_str().unwrap_or_default().to_string())
            .filter(|tags| tags.split(',').any(|t| t == format!("service:{service}")))
            .collect()
    };
    let (alpha, beta) = (tags_of("alpha"), tags_of("beta"));
    let all_tags: Vec<&str> = profiles.iter().filter_map(|p| p.event["tags_profiler"].as_str()).collect();
    assert_eq!(
        (alpha.len(), beta.len()),
        (1, 1),
        "one profile each, sent at exit:\n{all_tags:#?}\n{}",
        daemon.stderr_text()
    );
    assert!(alpha[0].contains("env:prod") && beta[0].contains("env:staging"), "{alpha:?} {beta:?}");
    let runtime_id = |tags: &str| tags.split(',').find(|t| t.starts_with("runtime-id:")).map(str::to_string);
    assert!(runtime_id(&alpha[0]).is_some() && runtime_id(&alpha[0]) != runtime_id(&beta[0]), "{alpha:?} {beta:?}");
    assert!(beta[0].contains(&format!("container_id:{}", container.id)), "{beta:?}");
    // The upload names its container, so the Datadog agent tags it with the pod's tags.
    let uploads: Vec<_> = agent.requests().into_iter().filter(|r| r.url.contains("/profiling/v1/input")).collect();
    let (beta_uploads, alpha_uploads): (Vec<_>, Vec<_>) = uploads.iter().partition(|r| r.body_contains("service:beta"));
    assert_eq!((beta_uploads.len(), alpha_uploads.len()), (1, 1), "{uploads:#?}");
    assert_eq!(beta_uploads[0].header("Datadog-Container-ID"), Some(container.id.as_str()), "{:?}", beta_uploads[0]);
    assert_eq!(beta_uploads[0].header("Datadog-Entity-ID"), Some(format!("ci-{}", container.id).as_str()));
    assert_eq!(alpha_uploads[0].header("Datadog-Container-ID"), None, "alpha runs in no container");
    // Nothing but the two services' samples.
    assert_eq!(profiles.len(), 2, "{all_tags:#?}");
    for profile in &profiles {
        let samples = profile.samples();
        let total: i64 = samples.iter().map(|s| s.values[0]).sum();
        assert!(total >= 50, "2 s of a busy thread: {total} samples");
    }
}

/// Datadog's stable configuration files select and configure processes: a rule matching a
/// process's arguments gives it a service (it is then traced, though its environment says
/// nothing), the fleet-managed file's default applies over every process's environment.
#[test]
fn the_stable_configuration_selects_and_configures_processes() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let dir = std::env::temp_dir().join(format!("ddtrace-node-stable-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("managed/datadog-agent/stable")).unwrap();
    std::fs::write(
        dir.join("application_monitoring.yaml"),
        "rules:\n  - selectors:\n      - origin: process_arguments\n        operator: equals\n        matches: [\"--billing-worker\"]\n    configuration:\n      DD_SERVICE: billing\n      DD_ENV: from-local-file\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("managed/datadog-agent/stable/application_monitoring.yaml"),
        "apm_configuration_default:\n  DD_VERSION: \"9.9\"\n",
    )
    .unwrap();
    let url = agent.url();
    let mut daemon =
        AgentProcess::start(&["--node", "--agent-url", &url, "--stable-config-dir", dir.to_str().unwrap()]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    // Selected by the rule alone; its own DD_ENV is over the local file's.
    let mut billing = SqliteWorker::spawn_with_args(&["--billing-worker"], &[("DD_ENV", "prod")]);
    // Selected by its environment; the fleet default's version is over its own.
    let mut opted = SqliteWorker::spawn_with_env(&[("DD_SERVICE", "opted"), ("DD_VERSION", "1.0")]);
    // Neither: left alone.
    let mut plain = SqliteWorker::spawn_with_args(&["--other-worker"], &[]);
    daemon.wait_for_stderr("as service billing", ATTACH_TIMEOUT);
    for worker in [&mut billing, &mut opted, &mut plain] {
        worker.run("work 1");
    }
    for worker in [billing, opted, plain] {
        worker.exit();
    }
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| with_resource(spans, INSERT).len() >= 2);
    let stderr = daemon.stderr_text();
    let _ = std::fs::remove_dir_all(&dir);
    let inserts = with_resource(&spans, INSERT);
    assert_eq!(inserts.len(), 2, "billing's and opted's, not plain's:\n{spans:#?}\n{stderr}");
    let billing_span = inserts.iter().find(|s| s["service"] == "billing").expect("billing traced by the rule");
    assert_eq!((meta(billing_span, "env"), meta(billing_span, "version")), ("prod", "9.9"), "{billing_span:#}");
    let opted_span = inserts.iter().find(|s| s["service"] == "opted").expect("opted traced");
    assert_eq!(meta(opted_span, "version"), "9.9", "the fleet file over the environment: {opted_span:#}");
    assert!(
        stderr.contains("as service billing, env prod, version 9.9")
            && stderr.contains("(the stable configuration sets DD_SERVICE)"),
        "{stderr}"
    );
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success(), "{}", daemon.stderr_text());
}

/// A node agent with `--probe-scope process` leaves a process that did not opt in untouched, not
/// one breakpoint in its copy of a library the agent probes for an opted-in neighbour.
#[test]
fn with_process_scope_a_process_that_did_not_opt_in_keeps_no_breakpoint() {
    use ddtrace_tests::breakpoints::breakpoints_in;
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut plain = SqliteWorker::spawn();
    let mut opted = SqliteWorker::spawn_with_env(&[("DD_SERVICE", "scoped")]);
    plain.run("import");
    opted.run("import");
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--node", "--probe-scope", "process", "--agent-url", &url]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    opted.run("work 1");
    plain.run("work 1");
    assert!(breakpoints_in(opted.pid(), "libsqlite3") > 0, "the opted-in process is probed");
    assert_eq!(breakpoints_in(plain.pid(), "libsqlite3"), 0, "the other process's code was touched");
    let (plain_pid, opted_pid) = (plain.pid(), opted.pid());
    plain.exit();
    opted.exit();
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| !with_resource(spans, INSERT).is_empty());
    let inserts = with_resource(&spans, INSERT);
    assert_eq!(inserts.len(), 1, "{spans:#?}\n{}", daemon.stderr_text());
    assert_eq!(inserts[0]["metrics"]["process_id"].as_f64(), Some(opted_pid as f64));
    assert!(spans.iter().all(|s| s["metrics"]["process_id"].as_f64() != Some(plain_pid as f64)));
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success(), "{}", daemon.stderr_text());
}

/// The kernel reads a new program's environment variable by variable, 255 bytes at a time:
/// `DD_SERVICE=` inside a long value is not a variable, and a `DD_SERVICE` behind hundreds of
/// long variables (Kubernetes adds several per Service of the namespace) is found.
#[test]
fn the_kernel_finds_dd_service_only_where_a_variable_starts() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let program = sqlite_once();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--node", "--agent-url", &url]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    // Values of `DD_SERVICE=fake` over and over: with a 15-byte `NAME=`, one starts 255 and 510
    // bytes into the variable, where cut reads resume; with a 16-byte one, 256 bytes in.
    let disguised = "DD_SERVICE=fake".repeat(60);
    let run = |env: Vec<(String, String)>| {
        let status = std::process::Command::new(&program).arg("1").envs(env).status().expect("sqlite_once runs");
        assert!(status.success());
    };
    run(vec![("NOT_A_SERVICE2".into(), disguised.clone()), ("NOT_A_SERVICE23".into(), disguised)]);
    let mut crowded: Vec<(String, String)> =
        (0..400).map(|i| (format!("SERVICE_{i}_PORT_HOST"), "z".repeat(300))).collect();
    crowded.push(("DD_SERVICE".into(), "behind-the-crowd".into()));
    run(crowded);
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| !spans.is_empty());
    std::thread::sleep(Duration::from_secs(2));
    let spans = if spans.len() < 2 { agent.spans() } else { spans };
    let services: Vec<&str> = spans.iter().filter_map(|s| s["service"].as_str()).collect();
    assert_eq!(services, ["behind-the-crowd"], "{spans:#?}\n{}", daemon.stderr_text());
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success(), "{}", daemon.stderr_text());
}
