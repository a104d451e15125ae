//! The deployment artifacts in `deploy/`: the plain Kubernetes manifest is the Helm chart rendered
//! with its defaults, both pass the Kubernetes schemas (`kubernetes-validate`, strict), and the
//! DaemonSet asks for what the agent needs and nothing more: the capabilities the agent checks
//! for at start (the same the image sets on the binary), the host's processes, a read-only root.
//!
//! The chart is rendered by `ddtrace_tests::chart`, not by helm (see there why).

use std::{path::PathBuf, process::Command};

use ddtrace_tests::{
    chart::{render, Release},
    workspace_root,
};
use serde_yaml::Value;

const MANIFEST: &str = "deploy/kubernetes/ddtrace-agent.yaml";
const CAPABILITIES: [&str; 3] = ["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"];

fn chart_dir() -> PathBuf {
    workspace_root().join("deploy/helm/ddtrace-agent")
}

fn default_release() -> Release<'static> {
    Release { name: "ddtrace-agent", namespace: "datadog" }
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text).map(|d| Value::deserialize(d).expect("valid YAML")).collect()
}

use serde::Deserialize;

fn daemonset(documents: &[Value]) -> &Value {
    documents.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet")
}

/// `kubernetes-validate --strict` on `text` (written to a file), panicking with its output.
fn validate(text: &str, name: &str) {
    let path = std::env::temp_dir().join(format!("ddtrace-deploy-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let output = Command::new("kubernetes-validate")
        .args(["--strict", path.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("kubernetes-validate cannot run ({e}): `cargo xtask test` installs it (pip install kubernetes-validate)"));
    let _ = std::fs::remove_file(&path);
    assert!(
        output.status.success(),
        "{name} fails the Kubernetes schemas:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_plain_manifest_is_the_chart_rendered_with_its_defaults() {
    let rendered = render(&chart_dir(), &default_release(), &Value::Null).expect("the chart renders");
    let path = workspace_root().join(MANIFEST);
    if std::env::var_os("DDTRACE_UPDATE_MANIFEST").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{MANIFEST} is not the chart rendered with its defaults; regenerate it with \
         DDTRACE_UPDATE_MANIFEST=1 cargo xtask test -- -p ddtrace-tests --test deploy\n--- rendered:\n{rendered}"
    );
}

#[test]
fn the_manifest_and_the_charts_variants_pass_the_kubernetes_schemas() {
    validate(&std::fs::read_to_string(workspace_root().join(MANIFEST)).unwrap(), "manifest");
    let socket: Value = serde_yaml::from_str(
        "datadogAgent: {socket: true}\nextraEnv: [{name: DD_ENV, value: staging}]\nargs: [--node, --select-exe, 'gunicorn*']",
    )
    .unwrap();
    let rendered = render(&chart_dir(), &Release { name: "tracer", namespace: "apm" }, &socket).unwrap();
    validate(&rendered, "chart-with-socket");
    let documents = documents(&rendered);
    let container = &daemonset(&documents)["spec"]["template"]["spec"]["containers"][0];
    let env = serde_yaml::to_string(&container["env"]).unwrap();
    assert!(env.contains("unix:///var/run/datadog/apm.socket") && env.contains("staging"), "{env}");
    assert!(!env.contains("DD_AGENT_HOST"), "{env}");
    let mounts = serde_yaml::to_string(&container["volumeMounts"]).unwrap();
    assert!(mounts.contains("/var/run/datadog"), "{mounts}");
}

#[test]
fn the_daemonset_asks_for_what_the_agent_needs_and_nothing_more() {
    let documents = documents(&std::fs::read_to_string(workspace_root().join(MANIFEST)).unwrap());
    let pod = &daemonset(&documents)["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], Value::Bool(true), "the node's processes");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], Value::Bool(false));
    assert_eq!(security["runAsNonRoot"], Value::Bool(true));
    assert_eq!(security["readOnlyRootFilesystem"], Value::Bool(true));
    // The default AppArmor profile would hide the node's other processes.
    assert_eq!(security["appArmorProfile"]["type"], Value::String("Unconfined".into()));
    assert_eq!(security["capabilities"]["drop"], serde_yaml::from_str::<Value>("[ALL]").unwrap());
    let added: Vec<&str> =
        security["capabilities"]["add"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(added, CAPABILITIES);
    // The same three: what the image sets on the binary and what the agent checks for at start.
    let dockerfile = std::fs::read_to_string(workspace_root().join("deploy/Dockerfile")).unwrap();
    let setcap = CAPABILITIES.iter().map(|c| format!("cap_{}", c.to_lowercase())).collect::<Vec<_>>().join(",");
    assert!(dockerfile.contains(&format!("setcap {setcap}+ep")), "the Dockerfile sets other capabilities");
    let privileges = std::fs::read_to_string(workspace_root().join("ddtrace-agent/src/daemon/privileges.rs")).unwrap();
    for capability in CAPABILITIES {
        assert!(privileges.contains(&format!("\"CAP_{capability}\"")), "the agent does not check CAP_{capability}");
    }
    // The agent's URL from the node it runs on, and its resources bounded.
    let env = serde_yaml::to_string(&container["env"]).unwrap();
    assert!(env.contains("DD_AGENT_HOST") && env.contains("status.hostIP"), "{env}");
    assert!(container["resources"]["limits"]["memory"].as_str().is_some(), "a memory limit");
    // Only the host paths it reads, read-only.
    let volumes: Vec<&str> =
        pod["volumes"].as_sequence().unwrap().iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
    assert_eq!(volumes, ["/sys/kernel/tracing", "/sys/fs/cgroup", "/etc/datadog-agent"]);
    assert!(container["volumeMounts"].as_sequence().unwrap().iter().all(|m| m["readOnly"] == Value::Bool(true)));
}
