//! The product manager: runs the product protocol over every registered product with
//! dd-trace-py's semantics (`ddtrace/internal/products.py`): start in dependency order, skip
//! what is disabled or whose requirements are not running, stop and exit in reverse, and keep
//! one product's failure from touching the others.

mod guard;
mod order;
#[cfg(test)]
mod tests;

/// The entries of `after` that are new or differ from `before`'s (same product, same name).
fn changed_entries(
    before: &[(&'static str, ProductConfig)],
    after: &[(&'static str, ProductConfig)],
) -> Vec<ConfigEntry> {
    let previous = |product: &str, name: &str| {
        before
            .iter()
            .filter(|(p, _)| *p == product)
            .flat_map(|(_, config)| config.entries.iter())
            .find(|entry| entry.name == name)
    };
    after
        .iter()
        .flat_map(|(product, config)| config.entries.iter().map(move |entry| (*product, entry)))
        .filter(|(product, entry)| previous(product, &entry.name) != Some(*entry))
        .map(|(_, entry)| entry.clone())
        .collect()
}

use std::collections::HashMap;

use guard::guarded;
pub use order::OrderError;

/// What the manager knows once every product started: for the products that report on the
/// others (remote configuration sends their capabilities, telemetry their configuration).
#[derive(Debug, Clone, Default)]
pub struct ProductsSummary {
    /// The running products, in start order.
    pub running: Vec<&'static str>,
    /// Their remote-configuration capabilities, OR-ed.
    pub capabilities: u64,
    /// Every registered product's configuration, running or not.
    pub configurations: Vec<(&'static str, ProductConfig)>,
    /// The products registered but not running (disabled, failed, left out).
    pub not_running: Vec<&'static str>,
}
use order::{order, Node};

use super::{ConfigEntry, Product, ProductConfig};
use crate::core::EventHub;

/// Where a product is in the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductStatus {
    /// Ordered; `start_all` has not reached it yet.
    Pending,
    /// Left out before anything started (the error was logged).
    LeftOut(OrderError),
    /// `enabled()` said no.
    Disabled,
    /// Not started because these requirements are not running (left out, disabled, failed).
    RequirementsNotRunning(Vec<&'static str>),
    /// Its `start` (or `enabled`, `requires`) failed or panicked.
    Failed,
    Running,
    /// Stopped by `stop`; it gets no further calls.
    Stopped,
    /// `at_exit` ran; it gets no further calls.
    Exited,
}

struct Registered {
    name: &'static str,
    requires: Vec<&'static str>,
    status: ProductStatus,
    product: Box<dyn Product>,
}

/// Runs the product protocol. Every operation goes to the running products only, in start
/// order (stop and exit in reverse), and each call is isolated (see `guard`).
pub struct ProductManager {
    products: Vec<Registered>,
    /// Indices into `products`, requirements first; left-out products excluded.
    start_order: Vec<usize>,
    /// Indices of running products, in the order they started.
    running: Vec<usize>,
    /// A name's first registration.
    index_of: HashMap<&'static str, usize>,
}

impl ProductManager {
    /// Registers `products` (see `products::registry`) and orders them; cycles, unknown
    /// requirements and duplicate names are logged and those products left out.
    pub fn new(products: Vec<Box<dyn Product>>) -> Self {
        let mut products: Vec<Registered> = products
            .into_iter()
            .map(|product| {
                let name = product.name();
                let (requires, status) = match guarded(name, "requires", || Ok(product.requires().to_vec())) {
                    Ok(requires) => (requires, ProductStatus::Pending),
                    Err(_) => (Vec::new(), ProductStatus::Failed),
                };
                Registered { name, requires, status, product }
            })
            .collect();
        let nodes: Vec<Node<'_>> =
            products.iter().map(|product| Node { name: product.name, requires: &product.requires }).collect();
        let order = order(&nodes);
        for (index, error) in order.left_out {
            tracing::error!(product = products[index].name, %error, "product left out");
            products[index].status = ProductStatus::LeftOut(error);
        }
        let mut index_of = HashMap::new();
        for (index, product) in products.iter().enumerate() {
            index_of.entry(product.name).or_insert(index);
        }
        Self { products, start_order: order.sequence, running: Vec::new(), index_of }
    }

    /// Starts every enabled product whose requirements are running, requirements first;
    /// returns the names of the running products, in start order.
    pub fn start_all(&mut self, hub: &mut EventHub) -> Vec<&'static str> {
        for position in 0..self.start_order.len() {
            let index = self.start_order[position];
            if self.products[index].status != ProductStatus::Pending {
                continue;
            }
            let status = self.start_one(index, hub);
            if status == ProductStatus::Running {
                self.running.push(index);
            }
            self.products[index].status = status;
        }
        self.running()
    }

    fn start_one(&mut self, index: usize, hub: &mut EventHub) -> ProductStatus {
        let not_running: Vec<&'static str> = self.products[index]
            .requires
            .iter()
            .copied()
            .filter(|name| self.status(name) != Some(&ProductStatus::Running))
            .collect();
        let product = &mut self.products[index];
        let name = product.name;
        match guarded(name, "enabled", || Ok(product.product.enabled())) {
            Err(_) => return ProductStatus::Failed,
            Ok(false) => {
                tracing::info!(product = name, "product disabled; not started");
                return ProductStatus::Disabled;
            }
            Ok(true) => {}
        }
        if !not_running.is_empty() {
            tracing::warn!(product = name, requirements = ?not_running, "product not started: its requirements are not running");
            return ProductStatus::RequirementsNotRunning(not_running);
        }
        match guarded(name, "start", || product.product.start(hub)) {
            Ok(()) => {
                tracing::debug!(product = name, "product started");
                ProductStatus::Running
            }
            Err(_) => ProductStatus::Failed,
        }
    }

    /// A traced process forked: restarts the running products in start order. A product whose
    /// requirement failed to restart is not restarted (it keeps running for `at_exit`).
    pub fn restart(&mut self, join: bool) {
        let mut failed: Vec<&'static str> = Vec::new();
        for &index in &self.running {
            let product = &mut self.products[index];
            let failed_requirements: Vec<_> = product.requires.iter().filter(|name| failed.contains(name)).collect();
            if !failed_requirements.is_empty() {
                tracing::error!(product = product.name, requirements = ?failed_requirements, "product not restarted: its requirements failed to restart");
                failed.push(product.name);
                continue;
            }
            if guarded(product.name, "restart", || product.product.restart(join)).is_err() {
                failed.push(product.name);
            }
        }
    }

    /// The probes are loaded and attached: tells every running product, in start order.
    pub fn post_preload(&mut self) {
        for &index in &self.running {
            let product = &mut self.products[index];
            let _ = guarded(product.name, "post_preload", || product.product.post_preload());
        }
    }

    /// Stops every running product, last started first. They get no further calls.
    pub fn stop(&mut self, join: bool) {
        for index in std::mem::take(&mut self.running).into_iter().rev() {
            let product = &mut self.products[index];
            let _ = guarded(product.name, "stop", || product.product.stop(join));
            product.status = ProductStatus::Stopped;
        }
    }

    /// The target exited or the daemon is stopping: flushes every running product, last started
    /// first. They get no further calls.
    pub fn at_exit(&mut self, join: bool) {
        for index in std::mem::take(&mut self.running).into_iter().rev() {
            let product = &mut self.products[index];
            let _ = guarded(product.name, "at_exit", || product.product.at_exit(join));
            product.status = ProductStatus::Exited;
        }
    }

    /// Hands an `APM_TRACING` remote configuration to every running product, in start order;
    /// then, if settings changed, tells every running product which (`configuration_changed`).
    pub fn apm_tracing_rc(&mut self, config: &serde_json::Value) {
        let before = self.configurations();
        for &index in &self.running {
            let product = &mut self.products[index];
            let _ = guarded(product.name, "apm_tracing_rc", || product.product.apm_tracing_rc(config));
        }
        let changes = changed_entries(&before, &self.configurations());
        if changes.is_empty() {
            return;
        }
        for &index in &self.running {
            let product = &mut self.products[index];
            let _ = guarded(product.name, "configuration_changed", || product.product.configuration_changed(&changes));
        }
    }

    /// The remote-configuration capabilities of the running products, OR-ed together.
    pub fn capabilities(&self) -> u64 {
        self.running
            .iter()
            .map(|&index| &self.products[index])
            .filter_map(|product| guarded(product.name, "capabilities", || Ok(product.product.capabilities())).ok())
            .fold(0, |all, capabilities| all | capabilities)
    }

    /// The configuration of every registered product, running or not, for configuration
    /// telemetry (dd-trace-py reports it when a product is loaded, before it starts).
    pub fn configurations(&self) -> Vec<(&'static str, ProductConfig)> {
        self.products
            .iter()
            .filter_map(|product| {
                let config = guarded(product.name, "config", || Ok(product.product.config())).ok().flatten()?;
                Some((product.name, config))
            })
            .collect()
    }

    /// The running products, their capabilities and every product's configuration.
    pub fn summary(&self) -> ProductsSummary {
        let running = self.running();
        let not_running =
            self.products.iter().map(|product| product.name).filter(|name| !running.contains(name)).collect();
        ProductsSummary {
            capabilities: self.capabilities(),
            configurations: self.configurations(),
            running,
            not_running,
        }
    }

    /// The running products' names, in start order.
    pub fn running(&self) -> Vec<&'static str> {
        self.running.iter().map(|&index| self.products[index].name).collect()
    }

    /// Where the product registered (first) as `name` is; `None` for an unknown name.
    pub fn status(&self, name: &str) -> Option<&ProductStatus> {
        self.index_of.get(name).map(|&index| &self.products[index].status)
    }
}
