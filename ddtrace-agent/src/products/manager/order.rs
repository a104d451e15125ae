//! The start order: requirements first, ties broken by registration order, so the order is the
//! same on every run. Products that cannot be ordered (duplicate name, unknown requirement,
//! cycle) are left out with the reason.

use std::collections::HashMap;

/// Why a product was left out before anything started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("product {product} is registered twice; only the first registration is kept")]
    DuplicateName { product: &'static str },
    #[error("product {product} requires {unknown:?}, which are not registered products")]
    UnknownRequirements { product: &'static str, unknown: Vec<&'static str> },
    #[error("products {cycle:?} require each other in a cycle, so {product} cannot start")]
    Cycle { product: &'static str, cycle: Vec<&'static str> },
}

/// A registered product as ordering sees it.
pub(super) struct Node<'a> {
    pub name: &'static str,
    pub requires: &'a [&'static str],
}

pub(super) struct Order {
    /// Indices into the nodes, in start order. Products that require a left-out one are
    /// included: the manager skips them at start because their requirement is not running.
    pub sequence: Vec<usize>,
    /// Indices of left-out products, in registration order, with why.
    pub left_out: Vec<(usize, OrderError)>,
}

/// Orders `nodes` topologically. A left-out node counts as placed for its dependents, so they
/// are reported once as "requirement not running" rather than as a false cycle (dd-trace-py
/// keeps failed products in its graph for the same reason).
pub(super) fn order(nodes: &[Node<'_>]) -> Order {
    let mut placed = vec![false; nodes.len()];
    let mut left_out = Vec::new();
    let mut index_of = HashMap::new();
    for (index, node) in nodes.iter().enumerate() {
        if index_of.contains_key(node.name) {
            left_out.push((index, OrderError::DuplicateName { product: node.name }));
            placed[index] = true;
        } else {
            index_of.insert(node.name, index);
        }
    }
    for (index, node) in nodes.iter().enumerate() {
        if placed[index] {
            continue;
        }
        let unknown: Vec<_> = node.requires.iter().copied().filter(|name| !index_of.contains_key(name)).collect();
        if !unknown.is_empty() {
            left_out.push((index, OrderError::UnknownRequirements { product: node.name, unknown }));
            placed[index] = true;
        }
    }
    let edges: Vec<Vec<usize>> = nodes
        .iter()
        .map(|node| node.requires.iter().filter_map(|name| index_of.get(name).copied()).collect())
        .collect();

    let mut sequence = Vec::new();
    loop {
        // Always the earliest registered ready product: a stable order. Products are few.
        let ready = (0..nodes.len()).find(|&index| !placed[index] && edges[index].iter().all(|&r| placed[r]));
        if let Some(index) = ready {
            placed[index] = true;
            sequence.push(index);
            continue;
        }
        let unplaced: Vec<usize> = (0..nodes.len()).filter(|&index| !placed[index]).collect();
        if unplaced.is_empty() {
            break;
        }
        // Nothing is ready, so every unplaced product requires an unplaced one: there is a cycle.
        // Leave out the products on a cycle; their dependents then become ready.
        let on_cycle: Vec<usize> =
            unplaced.iter().copied().filter(|&index| reaches(&edges, &placed, index, index)).collect();
        for &index in &on_cycle {
            let cycle = on_cycle
                .iter()
                .copied()
                .filter(|&other| reaches(&edges, &placed, index, other) && reaches(&edges, &placed, other, index))
                .map(|other| nodes[other].name)
                .collect();
            left_out.push((index, OrderError::Cycle { product: nodes[index].name, cycle }));
        }
        for &index in &on_cycle {
            placed[index] = true;
        }
    }
    left_out.sort_by_key(|(index, _)| *index);
    Order { sequence, left_out }
}

/// Whether `from` reaches `to` by following one or more requirements among unplaced products.
fn reaches(edges: &[Vec<usize>], placed: &[bool], from: usize, to: usize) -> bool {
    let mut seen = vec![false; edges.len()];
    let mut stack: Vec<usize> = edges[from].clone();
    while let Some(index) = stack.pop() {
        if index == to {
            return true;
        }
        if placed[index] || std::mem::replace(&mut seen[index], true) {
            continue;
        }
        stack.extend(edges[index].iter().copied());
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(nodes: &[Node<'_>], order: &Order) -> Vec<&'static str> {
        order.sequence.iter().map(|&index| nodes[index].name).collect()
    }

    #[test]
    fn two_separate_cycles_are_reported_separately() {
        let nodes = [
            Node { name: "a", requires: &["b"] },
            Node { name: "b", requires: &["a"] },
            Node { name: "c", requires: &["c"] },
            Node { name: "d", requires: &["a"] },
        ];
        let order = order(&nodes);
        assert_eq!(names(&nodes, &order), vec!["d"]);
        let cycles: Vec<_> = order.left_out.iter().map(|(_, error)| error.clone()).collect();
        assert_eq!(
            cycles,
            vec![
                OrderError::Cycle { product: "a", cycle: vec!["a", "b"] },
                OrderError::Cycle { product: "b", cycle: vec!["a", "b"] },
                OrderError::Cycle { product: "c", cycle: vec!["c"] },
            ]
        );
    }
}
