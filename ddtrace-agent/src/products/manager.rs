use super::Product;
use crate::core::EventHub;

/// Runs the product protocol: starts products in registration order (requirements first),
/// and stops them in reverse. A product that fails to start is left out; the others go on.
#[derive(Default)]
pub struct ProductManager {
    products: Vec<Box<dyn Product>>,
    started: Vec<usize>,
}

impl ProductManager {
    pub fn new(products: Vec<Box<dyn Product>>) -> Self {
        Self { products, started: Vec::new() }
    }

    /// Starts every product whose requirements started; returns the names of those that did.
    pub fn start_all(&mut self, hub: &mut EventHub) -> Vec<&'static str> {
        for index in 0..self.products.len() {
            let product = &self.products[index];
            let missing: Vec<&str> = product
                .requires()
                .iter()
                .copied()
                .filter(|required| !self.started.iter().any(|i| self.products[*i].name() == *required))
                .collect();
            if !missing.is_empty() {
                tracing::warn!(product = product.name(), ?missing, "not started: its requirements did not start");
                continue;
            }
            match self.products[index].start(hub) {
                Ok(()) => self.started.push(index),
                Err(error) => tracing::error!(%error, "product left out"),
            }
        }
        self.started.iter().map(|i| self.products[*i].name()).collect()
    }

    pub fn post_preload(&mut self) {
        for index in &self.started {
            self.products[*index].post_preload();
        }
    }

    /// Flushes every started product, last started first.
    pub fn at_exit(&mut self, join: bool) {
        for index in self.started.iter().rev() {
            self.products[*index].at_exit(join);
        }
    }
}
