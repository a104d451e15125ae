//! The manager's rules, one test each, with fake products that record every call they get.

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::*;
use crate::{
    config::Origin,
    products::{ProductConfig, ProductError},
};

type Calls = Arc<Mutex<Vec<String>>>;

/// A product that records `<name>.<operation>` and fails or panics where told to.
struct Fake {
    name: &'static str,
    requires: Vec<&'static str>,
    enabled: bool,
    capabilities: u64,
    fails_in: Option<&'static str>,
    panics_in: Option<&'static str>,
    calls: Calls,
}

impl Fake {
    fn new(name: &'static str, calls: &Calls) -> Self {
        Self {
            name,
            requires: Vec::new(),
            enabled: true,
            capabilities: 0,
            fails_in: None,
            panics_in: None,
            calls: calls.clone(),
        }
    }
    fn requires(mut self, requires: &[&'static str]) -> Self {
        self.requires = requires.to_vec();
        self
    }
    fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }
    fn capabilities(mut self, capabilities: u64) -> Self {
        self.capabilities = capabilities;
        self
    }
    fn fails_in(mut self, operation: &'static str) -> Self {
        self.fails_in = Some(operation);
        self
    }
    fn panics_in(mut self, operation: &'static str) -> Self {
        self.panics_in = Some(operation);
        self
    }
    fn boxed(self) -> Box<dyn Product> {
        Box::new(self)
    }

    fn call(&self, operation: &'static str, detail: &str) -> Result<(), ProductError> {
        self.calls.lock().unwrap().push(format!("{}.{operation}{detail}", self.name));
        if self.panics_in == Some(operation) {
            panic!("{} panics in {operation}", self.name);
        }
        if self.fails_in == Some(operation) {
            return Err(ProductError::Operation { product: self.name, operation, reason: "told to fail".into() });
        }
        Ok(())
    }
}

impl Product for Fake {
    fn name(&self) -> &'static str {
        self.name
    }
    fn start(&mut self, _hub: &mut EventHub) -> Result<(), ProductError> {
        self.call("start", "")
    }
    fn restart(&mut self, _join: bool) -> Result<(), ProductError> {
        self.call("restart", "")
    }
    fn stop(&mut self, _join: bool) -> Result<(), ProductError> {
        self.call("stop", "")
    }
    fn at_exit(&mut self, _join: bool) -> Result<(), ProductError> {
        self.call("at_exit", "")
    }
    fn post_preload(&mut self) -> Result<(), ProductError> {
        self.call("post_preload", "")
    }
    fn requires(&self) -> &[&'static str] {
        &self.requires
    }
    fn enabled(&self) -> bool {
        if self.panics_in == Some("enabled") {
            panic!("{} panics in enabled", self.name);
        }
        self.enabled
    }
    fn config(&self) -> Option<ProductConfig> {
        let enabled = if self.enabled { "true" } else { "false" };
        Some(ProductConfig::new().with(format!("DD_{}_ENABLED", self.name.to_uppercase()), enabled, Origin::Default))
    }
    fn capabilities(&self) -> u64 {
        if self.panics_in == Some("capabilities") {
            panic!("{} panics in capabilities", self.name);
        }
        self.capabilities
    }
    fn apm_tracing_rc(&mut self, config: &serde_json::Value) -> Result<(), ProductError> {
        self.call("apm_tracing_rc", &format!("({config})"))?;
        // A remote switch of its own, to change its configuration.
        if let Some(enabled) = config.get(self.name).and_then(|c| c.as_bool()) {
            self.enabled = enabled;
        }
        Ok(())
    }
    fn configuration_changed(&mut self, changes: &[crate::products::ConfigEntry]) -> Result<(), ProductError> {
        let changes: Vec<String> = changes.iter().map(|c| format!("{}={}", c.name, c.value)).collect();
        self.call("configuration_changed", &format!("({})", changes.join(",")))
    }
}

fn started(products: Vec<Box<dyn Product>>) -> ProductManager {
    let mut manager = ProductManager::new(products);
    manager.start_all(&mut EventHub::new());
    manager
}

/// Takes the calls recorded so far.
fn calls(calls: &Calls) -> Vec<String> {
    std::mem::take(&mut *calls.lock().unwrap())
}

#[test]
fn starts_requirements_first_even_when_registered_in_reverse() {
    let log = Calls::default();
    let mut manager = ProductManager::new(vec![
        Fake::new("c", &log).requires(&["b"]).boxed(),
        Fake::new("b", &log).requires(&["a"]).boxed(),
        Fake::new("a", &log).boxed(),
    ]);
    assert_eq!(manager.start_all(&mut EventHub::new()), vec!["a", "b", "c"]);
    assert_eq!(calls(&log), vec!["a.start", "b.start", "c.start"]);
}

#[test]
fn order_keeps_registration_order_where_requirements_allow() {
    let log = Calls::default();
    let manager = started(vec![
        Fake::new("x", &log).boxed(),
        Fake::new("c", &log).requires(&["a"]).boxed(),
        Fake::new("a", &log).boxed(),
        Fake::new("y", &log).boxed(),
    ]);
    assert_eq!(manager.running(), vec!["x", "a", "c", "y"]);
}

#[test]
fn a_cycle_leaves_out_its_members_and_their_dependents() {
    let log = Calls::default();
    let manager = started(vec![
        Fake::new("a", &log).requires(&["b"]).boxed(),
        Fake::new("b", &log).requires(&["a"]).boxed(),
        Fake::new("c", &log).requires(&["a"]).boxed(),
        Fake::new("d", &log).boxed(),
    ]);
    assert_eq!(manager.running(), vec!["d"]);
    assert_eq!(calls(&log), vec!["d.start"]);
    assert_eq!(
        manager.status("a"),
        Some(&ProductStatus::LeftOut(OrderError::Cycle { product: "a", cycle: vec!["a", "b"] }))
    );
    assert_eq!(
        manager.status("b"),
        Some(&ProductStatus::LeftOut(OrderError::Cycle { product: "b", cycle: vec!["a", "b"] }))
    );
    assert_eq!(manager.status("c"), Some(&ProductStatus::RequirementsNotRunning(vec!["a"])));
}

#[test]
fn a_product_requiring_itself_is_a_cycle() {
    let log = Calls::default();
    let manager = started(vec![Fake::new("a", &log).requires(&["a"]).boxed()]);
    assert_eq!(
        manager.status("a"),
        Some(&ProductStatus::LeftOut(OrderError::Cycle { product: "a", cycle: vec!["a"] }))
    );
    assert!(calls(&log).is_empty());
}

#[test]
fn an_unknown_requirement_leaves_the_product_and_its_dependents_out() {
    let log = Calls::default();
    let manager = started(vec![
        Fake::new("a", &log).requires(&["nope"]).boxed(),
        Fake::new("b", &log).requires(&["a"]).boxed(),
        Fake::new("c", &log).boxed(),
    ]);
    assert_eq!(manager.running(), vec!["c"]);
    assert_eq!(
        manager.status("a"),
        Some(&ProductStatus::LeftOut(OrderError::UnknownRequirements { product: "a", unknown: vec!["nope"] }))
    );
    assert_eq!(manager.status("b"), Some(&ProductStatus::RequirementsNotRunning(vec!["a"])));
    assert_eq!(calls(&log), vec!["c.start"]);
}

#[test]
fn a_duplicate_name_keeps_the_first_registration() {
    let log = Calls::default();
    let manager = started(vec![Fake::new("a", &log).boxed(), Fake::new("a", &log).disabled().boxed()]);
    assert_eq!(manager.running(), vec!["a"]);
    assert_eq!(calls(&log), vec!["a.start"]);
}

#[test]
fn a_product_whose_requirement_failed_to_start_is_not_started() {
    let log = Calls::default();
    let manager = started(vec![
        Fake::new("a", &log).fails_in("start").boxed(),
        Fake::new("b", &log).requires(&["a"]).boxed(),
        Fake::new("c", &log).requires(&["b"]).boxed(),
        Fake::new("d", &log).boxed(),
    ]);
    assert_eq!(manager.running(), vec!["d"]);
    assert_eq!(calls(&log), vec!["a.start", "d.start"]);
    assert_eq!(manager.status("a"), Some(&ProductStatus::Failed));
    assert_eq!(manager.status("b"), Some(&ProductStatus::RequirementsNotRunning(vec!["a"])));
    assert_eq!(manager.status("c"), Some(&ProductStatus::RequirementsNotRunning(vec!["b"])));
}

#[test]
fn a_disabled_product_and_its_dependents_are_skipped() {
    let log = Calls::default();
    let manager = started(vec![
        Fake::new("a", &log).disabled().boxed(),
        Fake::new("b", &log).requires(&["a"]).boxed(),
        Fake::new("c", &log).boxed(),
    ]);
    assert_eq!(manager.running(), vec!["c"]);
    assert_eq!(calls(&log), vec!["c.start"]);
    assert_eq!(manager.status("a"), Some(&ProductStatus::Disabled));
    assert_eq!(manager.status("b"), Some(&ProductStatus::RequirementsNotRunning(vec!["a"])));
}

fn three_running(log: &Calls) -> ProductManager {
    let manager = started(vec![
        Fake::new("b", log).requires(&["a"]).boxed(),
        Fake::new("a", log).boxed(),
        Fake::new("c", log).requires(&["b"]).boxed(),
    ]);
    assert_eq!(calls(log), vec!["a.start", "b.start", "c.start"]);
    manager
}

#[test]
fn stop_runs_in_reverse_start_order_and_only_once() {
    let log = Calls::default();
    let mut manager = three_running(&log);
    manager.stop(true);
    assert_eq!(calls(&log), vec!["c.stop", "b.stop", "a.stop"]);
    manager.stop(true);
    manager.at_exit(true);
    manager.apm_tracing_rc(&json!({}));
    assert!(calls(&log).is_empty(), "stopped products get no further calls");
    assert_eq!(manager.status("a"), Some(&ProductStatus::Stopped));
}

#[test]
fn at_exit_runs_in_reverse_start_order_and_only_once() {
    let log = Calls::default();
    let mut manager = three_running(&log);
    manager.at_exit(true);
    assert_eq!(calls(&log), vec!["c.at_exit", "b.at_exit", "a.at_exit"]);
    manager.at_exit(true);
    assert!(calls(&log).is_empty());
    assert_eq!(manager.capabilities(), 0);
}

#[test]
fn restart_and_post_preload_reach_every_running_product_in_start_order() {
    let log = Calls::default();
    let mut manager = three_running(&log);
    manager.post_preload();
    manager.restart(false);
    assert_eq!(
        calls(&log),
        vec!["a.post_preload", "b.post_preload", "c.post_preload", "a.restart", "b.restart", "c.restart"]
    );
}

#[test]
fn a_product_whose_requirement_failed_to_restart_is_not_restarted() {
    let log = Calls::default();
    let mut manager = started(vec![
        Fake::new("a", &log).fails_in("restart").boxed(),
        Fake::new("b", &log).requires(&["a"]).boxed(),
        Fake::new("c", &log).requires(&["b"]).boxed(),
        Fake::new("d", &log).boxed(),
    ]);
    calls(&log);
    manager.restart(true);
    assert_eq!(calls(&log), vec!["a.restart", "d.restart"]);
    // They still get flushed at exit.
    manager.at_exit(true);
    assert_eq!(calls(&log), vec!["d.at_exit", "c.at_exit", "b.at_exit", "a.at_exit"]);
}

#[test]
fn a_panic_in_start_counts_as_a_failed_start_and_is_isolated() {
    let log = Calls::default();
    let mut manager = started(vec![
        Fake::new("a", &log).panics_in("start").boxed(),
        Fake::new("b", &log).requires(&["a"]).boxed(),
        Fake::new("c", &log).boxed(),
    ]);
    assert_eq!(manager.running(), vec!["c"]);
    assert_eq!(manager.status("a"), Some(&ProductStatus::Failed));
    assert_eq!(manager.status("b"), Some(&ProductStatus::RequirementsNotRunning(vec!["a"])));
    manager.at_exit(true);
    assert_eq!(calls(&log), vec!["a.start", "c.start", "c.at_exit"]);
}

#[test]
fn a_panic_in_enabled_counts_as_a_failed_start() {
    let log = Calls::default();
    let manager = started(vec![Fake::new("a", &log).panics_in("enabled").boxed(), Fake::new("b", &log).boxed()]);
    assert_eq!(manager.running(), vec!["b"]);
    assert_eq!(manager.status("a"), Some(&ProductStatus::Failed));
}

#[test]
fn a_panic_in_at_exit_does_not_keep_the_others_from_flushing() {
    let log = Calls::default();
    let mut manager = started(vec![
        Fake::new("a", &log).boxed(),
        Fake::new("b", &log).panics_in("at_exit").boxed(),
        Fake::new("c", &log).fails_in("at_exit").boxed(),
    ]);
    calls(&log);
    manager.at_exit(true);
    assert_eq!(calls(&log), vec!["c.at_exit", "b.at_exit", "a.at_exit"]);
    assert_eq!(manager.status("b"), Some(&ProductStatus::Exited));
}

#[test]
fn apm_tracing_rc_reaches_every_running_product_with_the_config() {
    let log = Calls::default();
    let mut manager = started(vec![
        Fake::new("b", &log).requires(&["a"]).boxed(),
        Fake::new("off", &log).disabled().boxed(),
        Fake::new("a", &log).boxed(),
    ]);
    calls(&log);
    manager.apm_tracing_rc(&json!({"tracing_enabled": false}));
    assert_eq!(
        calls(&log),
        vec![r#"a.apm_tracing_rc({"tracing_enabled":false})"#, r#"b.apm_tracing_rc({"tracing_enabled":false})"#]
    );
}

#[test]
fn a_panic_in_apm_tracing_rc_is_isolated() {
    let log = Calls::default();
    let mut manager = started(vec![
        Fake::new("a", &log).panics_in("apm_tracing_rc").boxed(),
        Fake::new("b", &log).fails_in("apm_tracing_rc").boxed(),
        Fake::new("c", &log).boxed(),
    ]);
    calls(&log);
    manager.apm_tracing_rc(&json!(1));
    manager.apm_tracing_rc(&json!(2));
    assert_eq!(
        calls(&log),
        vec![
            "a.apm_tracing_rc(1)",
            "b.apm_tracing_rc(1)",
            "c.apm_tracing_rc(1)",
            "a.apm_tracing_rc(2)",
            "b.apm_tracing_rc(2)",
            "c.apm_tracing_rc(2)",
        ]
    );
    assert_eq!(manager.running(), vec!["a", "b", "c"], "a failed update does not stop a product");
}

#[test]
fn capabilities_are_the_or_of_the_running_products() {
    let log = Calls::default();
    let manager = started(vec![
        Fake::new("a", &log).capabilities(0b0001).boxed(),
        Fake::new("b", &log).capabilities(0b0100).boxed(),
        Fake::new("off", &log).capabilities(0b0010).disabled().boxed(),
        Fake::new("failed", &log).capabilities(0b1000).fails_in("start").boxed(),
        Fake::new("broken", &log).capabilities(0b1_0000).panics_in("capabilities").boxed(),
    ]);
    assert_eq!(manager.capabilities(), 0b0101);
}

#[test]
fn configurations_cover_every_registered_product() {
    let log = Calls::default();
    let manager = started(vec![Fake::new("a", &log).boxed(), Fake::new("off", &log).disabled().boxed()]);
    let configurations = manager.configurations();
    let names: Vec<_> = configurations.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, vec!["a", "off"]);
    let entry = &configurations[1].1.entries[0];
    assert_eq!((entry.name.as_str(), entry.value.as_str(), entry.origin), ("DD_OFF_ENABLED", "false", Origin::Default));
}

#[test]
fn a_panic_in_post_preload_or_restart_is_isolated() {
    let log = Calls::default();
    let mut manager = started(vec![
        Fake::new("a", &log).panics_in("post_preload").boxed(),
        Fake::new("b", &log).panics_in("restart").boxed(),
        Fake::new("c", &log).boxed(),
    ]);
    calls(&log);
    manager.post_preload();
    manager.restart(true);
    assert_eq!(
        calls(&log),
        vec!["a.post_preload", "b.post_preload", "c.post_preload", "a.restart", "b.restart", "c.restart"]
    );
    assert_eq!(manager.running(), vec!["a", "b", "c"]);
}

#[test]
fn summary_has_running_products_capabilities_and_configurations() {
    let log = Calls::default();
    let manager = started(vec![
        Fake::new("a", &log).capabilities(0b01).boxed(),
        Fake::new("off", &log).capabilities(0b10).disabled().boxed(),
    ]);
    let summary = manager.summary();
    assert_eq!(summary.running, vec!["a"]);
    assert_eq!(summary.not_running, vec!["off"]);
    assert_eq!(summary.capabilities, 0b01);
    assert_eq!(summary.configurations.len(), 2);
}

#[test]
fn settings_changed_by_remote_configuration_are_announced_to_every_running_product() {
    let log = Calls::default();
    let mut manager = started(vec![Fake::new("a", &log).boxed(), Fake::new("b", &log).boxed()]);
    calls(&log);
    manager.apm_tracing_rc(&json!({"a": false}));
    assert_eq!(
        calls(&log),
        vec![
            r#"a.apm_tracing_rc({"a":false})"#,
            r#"b.apm_tracing_rc({"a":false})"#,
            "a.configuration_changed(DD_A_ENABLED=false)",
            "b.configuration_changed(DD_A_ENABLED=false)",
        ]
    );
    // The same again changes nothing: nothing announced.
    manager.apm_tracing_rc(&json!({"a": false}));
    assert_eq!(calls(&log), vec![r#"a.apm_tracing_rc({"a":false})"#, r#"b.apm_tracing_rc({"a":false})"#]);
}
