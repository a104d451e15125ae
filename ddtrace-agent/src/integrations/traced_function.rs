//! Any function named by the user (`--trace-function FILE:SYMBOL`): a `trace.annotation` span
//! per call, as dd-trace-py's `DD_TRACE_METHODS` gives. Also what `cargo xtask bench` measures
//! our probes with.

use super::{Integration, LibraryMatch};
use crate::{
    core::{CallStacks, ContextData, ContextId, ContextTree, SpanKind},
    probes::{ProbeDef, ProbeEvent},
};

#[derive(Debug, thiserror::Error)]
pub enum TracedFunctionError {
    #[error("--trace-function expects FILE:SYMBOL (e.g. /usr/bin/app:handle_request), got {0:?}")]
    Malformed(String),
}

pub struct TracedFunction {
    file: &'static str,
    symbol: &'static str,
    probes: &'static [ProbeDef],
    /// Open calls per thread and frame: (tgid, context).
    open: CallStacks<(u32, ContextId)>,
}

impl TracedFunction {
    /// Parses `FILE:SYMBOL`. The strings live as long as the daemon (a handful, from flags).
    pub fn parse(spec: &str) -> Result<Self, TracedFunctionError> {
        let (file, symbol) = spec
            .rsplit_once(':')
            .filter(|(file, symbol)| !file.is_empty() && !symbol.is_empty())
            .ok_or_else(|| TracedFunctionError::Malformed(spec.to_string()))?;
        let file: &'static str = Box::leak(file.to_string().into_boxed_str());
        let symbol: &'static str = Box::leak(symbol.to_string().into_boxed_str());
        let probes: &'static [ProbeDef] = Box::leak(Box::new([ProbeDef::entry(symbol).with_exit().required()]));
        Ok(Self { file, symbol, probes, open: CallStacks::default() })
    }
}

impl Integration for TracedFunction {
    fn name(&self) -> &'static str {
        self.symbol
    }

    fn library(&self) -> LibraryMatch {
        LibraryMatch::File(self.file)
    }

    fn probes(&self) -> &'static [ProbeDef] {
        self.probes
    }

    fn on_event(&mut self, _probe_index: usize, event: &ProbeEvent, contexts: &mut ContextTree) {
        match event {
            ProbeEvent::Entry(entry) => {
                let data =
                    ContextData::new("trace.annotation", "trace", "", SpanKind::Internal).with_resource(self.symbol);
                let id = contexts.start(entry.tgid, entry.tid, entry.ktime_ns, entry.frame, data);
                self.open.enter(entry.tid, entry.frame, (entry.tgid, id));
            }
            ProbeEvent::Exit(exit) => {
                if let Some(((_, id), _lost)) = self.open.exit(exit.tid, exit.frame) {
                    contexts.end(exit.tid, id, exit.ktime_ns, |_| {});
                }
            }
        }
    }

    fn on_process_exit(&mut self, tgid: u32) {
        self.open.forget(|(owner, _)| *owner == tgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_symbol() {
        let traced = TracedFunction::parse("/usr/bin/app:handle").unwrap();
        assert_eq!((traced.file, traced.symbol), ("/usr/bin/app", "handle"));
        assert!(TracedFunction::parse("nosymbol").is_err());
        assert!(TracedFunction::parse("file:").is_err());
    }
}
