//! The profiling product end to end: real programs (C built with and without frame pointers,
//! Rust), the real perf-event sampler, and the profiles the Datadog test agent received.

use std::{collections::HashSet, path::Path, time::Duration};

use ddtrace_tests::{
    agent_process::AgentProcess,
    native_app::{build_c, build_rust, NativeApp},
    profiles::{received_profiles, FlatSample, UploadedProfile},
    test_agent::TestAgent,
};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the programs work once profiled.
const WORK_SECONDS: &str = "3";
const HOT_CHAIN: [&str; 5] = ["main", "run_request", "hot_a", "hot_b", "hot_c"];

/// Runs `program` for `WORK_SECONDS` under the daemon (sending to `agent`) and returns the
/// profiles received once both exited.
fn profile_run(program: &Path, agent: &TestAgent, extra: &[&str]) -> (Vec<UploadedProfile>, AgentProcess) {
    profile_run_with_env(program, agent, extra, &[])
}

/// Same, with `env` in the program's environment.
fn profile_run_with_env(
    program: &Path,
    agent: &TestAgent,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Vec<UploadedProfile>, AgentProcess) {
    let mut app = NativeApp::spawn_with_env(program, &[WORK_SECONDS], env);
    let pid = app.pid().to_string();
    let url = agent.url();
    let mut args = vec!["--pid", &pid, "--agent-url", &url];
    args.extend_from_slice(extra);
    let mut daemon = AgentProcess::start(&args);
    daemon.wait_for_stderr("profiling: sampling CPU at 100 Hz", ATTACH_TIMEOUT);
    app.go();
    assert!(app.wait_exit(Duration::from_secs(30)).success());
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "daemon exit {status}:\n{}", daemon.stderr_text());
    let profiles = received_profiles(agent);
    assert!(!profiles.is_empty(), "no profile reached the agent:\n{}", daemon.stderr_text());
    (profiles, daemon)
}

fn all_samples(profiles: &[UploadedProfile]) -> Vec<FlatSample> {
    profiles.iter().flat_map(UploadedProfile::samples).collect()
}

/// Sum of the first value (sample count) of the samples `keep` selects.
fn count(samples: &[FlatSample], keep: impl Fn(&FlatSample) -> bool) -> i64 {
    samples.iter().filter(|s| keep(s)).map(|s| s.values[0]).sum()
}

fn describe(samples: &[FlatSample]) -> String {
    let mut stacks: Vec<(i64, String)> = samples
        .iter()
        .map(|s| (s.values[0], s.functions.iter().rev().cloned().collect::<Vec<_>>().join(";")))
        .collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.0));
    stacks.iter().take(15).map(|(n, stack)| format!("{n:5} {stack}")).collect::<Vec<_>>().join("\n")
}

/// What every profile of a C hot-chain run must show, however the binary was built.
fn assert_hot_chain_profile(profiles: &[UploadedProfile], daemon: &AgentProcess, service: &str) {
    // The program exits 3 s into a 60 s upload period: its profile is sent at exit.
    assert_eq!(profiles.len(), 1, "one profile, sent at exit mid-period:\n{}", daemon.stderr_text());
    let profile = &profiles[0];
    let event = &profile.event;
    assert_eq!(event["family"], "native", "{event:#}");
    assert_eq!(event["version"], "4");
    assert_eq!(event["attachments"], serde_json::json!(["profile.pprof"]));
    assert!(event["start"].as_str().unwrap() < event["end"].as_str().unwrap(), "{event:#}");
    let tags = event["tags_profiler"].as_str().unwrap();
    assert!(tags.split(',').any(|t| t == format!("service:{service}")), "{tags}");
    assert!(tags.split(',').any(|t| t.starts_with("runtime-id:")), "{tags}");
    assert_eq!(
        profile.sample_types(),
        [("cpu-samples".into(), "count".into()), ("cpu-time".into(), "nanoseconds".into())]
    );

    let samples = profile.samples();
    let total = count(&samples, |_| true);
    // 3 s of one busy thread at 100 Hz; the VM may lend less CPU than asked.
    assert!(total >= 100, "only {total} samples:\n{}", describe(&samples));
    let in_chain = count(&samples, |s| s.has_call_chain(&HOT_CHAIN));
    assert!(
        in_chain * 100 >= total * 80,
        "main -> run_request -> hot_a -> hot_b -> hot_c in {in_chain} of {total} samples:\n{}",
        describe(&samples)
    );
    // Part of hot_c's time is in libc's qsort calling back into the program: Debian's libc has
    // no frame pointers, so only its call frame information leads from the comparator to hot_c.
    let through_libc = count(&samples, |s| {
        s.functions.first().is_some_and(|leaf| leaf == "compare_keys") && s.has_call_chain(&HOT_CHAIN)
    });
    assert!(through_libc > 0, "no complete stack from compare_keys through qsort:\n{}", describe(&samples));
    let sample = samples.iter().find(|s| s.has_call_chain(&HOT_CHAIN)).unwrap();
    assert!(sample.num_label("thread id").is_some_and(|tid| tid > 0), "{sample:?}");
    assert!(sample.str_label("thread name").is_some_and(|n| n.starts_with("hot_chain")), "{sample:?}");
    assert!(sample.modules.iter().any(|m| m.ends_with(service.trim_start_matches("svc-"))), "{sample:?}");
}

#[test]
fn c_program_without_frame_pointers_is_unwound_by_call_frame_information() {
    let _serial = ddtrace_tests::serial();
    let program = build_c("hot_chain.c", "hot_chain_nofp", &["-O2", "-fomit-frame-pointer"]);
    let agent = TestAgent::start();
    let (profiles, daemon) = profile_run(&program, &agent, &["--service", "svc-hot_chain_nofp"]);
    assert_hot_chain_profile(&profiles, &daemon, "svc-hot_chain_nofp");
}

#[test]
fn c_program_with_frame_pointers_is_profiled_with_its_call_chain() {
    let _serial = ddtrace_tests::serial();
    let program = build_c("hot_chain.c", "hot_chain_fp", &["-O2", "-fno-omit-frame-pointer"]);
    let agent = TestAgent::start();
    let (profiles, daemon) = profile_run(&program, &agent, &["--service", "svc-hot_chain_fp"]);
    assert_hot_chain_profile(&profiles, &daemon, "svc-hot_chain_fp");
}

#[test]
fn rust_program_functions_are_demangled_and_uploads_follow_the_period() {
    let _serial = ddtrace_tests::serial();
    let program = build_rust("hot_rust.rs", "hot_rust");
    let agent = TestAgent::start();
    // The target's own environment sets a 1 s upload period, as it would for dd-trace-py.
    let env = [("DD_PROFILING_UPLOAD_PERIOD", "1")];
    let (profiles, daemon) = profile_run_with_env(&program, &agent, &["--service", "hot-rust"], &env);
    assert!(profiles.len() >= 2, "{} uploads in 3 s at a 1 s period:\n{}", profiles.len(), daemon.stderr_text());
    for pair in profiles.windows(2) {
        let (end, next_start) = (pair[0].event["end"].as_str().unwrap(), pair[1].event["start"].as_str().unwrap());
        assert!(end <= next_start, "profile windows overlap: {end} > {next_start}");
    }
    let samples = all_samples(&profiles);
    let total = count(&samples, |_| true);
    let grind = "hot_rust::crunch::Mixer<u64>::grind";
    let in_grind = count(&samples, |s| s.functions.first().is_some_and(|f| f == grind));
    assert!(in_grind * 100 >= total * 80, "{in_grind} of {total} samples in {grind}:\n{}", describe(&samples));
    let chained = count(&samples, |s| s.has_call_chain(&["hot_rust::work_for", grind]));
    assert!(chained * 100 >= total * 80, "work_for -> grind in {chained} of {total}:\n{}", describe(&samples));
    for sample in &samples {
        for function in &sample.functions {
            assert!(!function.starts_with("_ZN") && !function.starts_with("_R"), "still mangled: {function}");
        }
    }
}

#[test]
fn samples_taken_in_a_traced_span_carry_its_span_ids() {
    let _serial = ddtrace_tests::serial();
    let program = build_c("hot_chain.c", "hot_chain_traced", &["-O2"]);
    let agent = TestAgent::start();
    let function = format!("{}:run_request", program.display());
    let (profiles, daemon) = profile_run(&program, &agent, &["--service", "traced", "--trace-function", &function]);
    let spans = agent.spans();
    let span_ids: HashSet<u64> = spans.iter().filter_map(|s| s["span_id"].as_u64()).collect();
    assert!(span_ids.len() > 50, "{} spans:\n{}", span_ids.len(), daemon.stderr_text());
    let samples = all_samples(&profiles);
    let total = count(&samples, |_| true);
    let linked: Vec<&FlatSample> = samples.iter().filter(|s| s.num_label("span id").is_some()).collect();
    let linked_count: i64 = linked.iter().map(|s| s.values[0]).sum();
    // run_request (the span) holds nearly all the CPU time.
    assert!(linked_count * 100 >= total * 80, "{linked_count} of {total} samples carry a span id");
    for sample in &linked {
        let span_id = sample.num_label("span id").unwrap() as u64;
        assert!(span_ids.contains(&span_id), "span id {span_id} of a sample is no span the agent received");
        // Each run_request span is its own local root.
        assert_eq!(sample.num_label("local root span id").map(|id| id as u64), Some(span_id));
    }
    // What ran in the span is run_request and its callees (an unwind may rarely stop short).
    let in_function = count(&samples, |s| s.num_label("span id").is_some() && s.has_call_chain(&["run_request"]));
    assert!(in_function * 100 >= linked_count * 98, "{in_function} of {linked_count} linked samples in run_request");
    agent.assert_checks_passed();
}

#[test]
fn profile_output_writes_a_flame_graph_and_a_pprof_without_any_agent() {
    let _serial = ddtrace_tests::serial();
    let program = build_c("hot_chain.c", "hot_chain_output", &["-O2"]);
    let dir = std::env::temp_dir().join(format!("ddtrace-profile-output-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["cpu.svg", "cpu.pprof"] {
        let output = dir.join(name);
        let mut app = NativeApp::spawn(&program, &["1"]);
        let pid = app.pid().to_string();
        let mut daemon = AgentProcess::start(&[
            "--pid",
            &pid,
            "--exporter",
            "console",
            "--profile-output",
            output.to_str().unwrap(),
        ]);
        daemon.wait_for_stderr("profiling: sampling CPU", ATTACH_TIMEOUT);
        app.go();
        assert!(app.wait_exit(Duration::from_secs(30)).success());
        assert!(daemon.wait_exit(Duration::from_secs(20)).success(), "{}", daemon.stderr_text());
        let bytes = std::fs::read(&output).unwrap_or_else(|e| panic!("{name}: {e}\n{}", daemon.stderr_text()));
        if name.ends_with(".svg") {
            let svg = String::from_utf8(bytes).unwrap();
            assert!(svg.contains("<svg") && svg.contains("hot_c"), "flame graph without hot_c");
        } else {
            use prost::Message as _;
            let pprof = libdd_profiling_protobuf::prost_impls::Profile::decode(bytes.as_slice()).expect("a pprof file");
            assert!(pprof.string_table.iter().any(|s| s == "hot_c"), "pprof without hot_c");
            assert!(!pprof.samples.is_empty());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
