/// Per-thread call stacks keyed by call frame (the stack pointer at entry), so an exit finds its
/// own entry even when events were lost in between. The stack grows down: a nested call has a
/// lower frame than its caller; a new call at the same or a higher frame than an open one means
/// that one already returned and its exit was lost.
#[derive(Debug)]
pub struct CallStacks<T> {
    threads: rustc_hash::FxHashMap<u32, Vec<(u64, T)>>,
}

impl<T> Default for CallStacks<T> {
    fn default() -> Self {
        Self { threads: Default::default() }
    }
}

impl<T> CallStacks<T> {
    /// Records a call entered at `frame` on thread `tid`. Returns the open calls it proves
    /// returned without an exit event (innermost first).
    pub fn enter(&mut self, tid: u32, frame: u64, value: T) -> Vec<T> {
        let stack = self.threads.entry(tid).or_default();
        let keep = stack.iter().position(|(open, _)| *open <= frame).unwrap_or(stack.len());
        let lost = stack.drain(keep..).rev().map(|(_, v)| v).collect();
        stack.push((frame, value));
        lost
    }

    /// The call at `frame` of thread `tid` returned: returns it, and the calls nested in it that
    /// lost their exits (innermost first). `None` when no open call has that frame (its entry
    /// was lost, or it began before we attached).
    pub fn exit(&mut self, tid: u32, frame: u64) -> Option<(T, Vec<T>)> {
        let stack = self.threads.get_mut(&tid)?;
        let position = stack.iter().rposition(|(open, _)| *open == frame)?;
        let (call, popped) = if position + 1 == stack.len() {
            // The usual case, the innermost call returning: nothing lost, nothing to allocate.
            (stack.pop()?.1, Vec::new())
        } else {
            let mut popped: Vec<T> = stack.drain(position..).rev().map(|(_, v)| v).collect();
            (popped.pop()?, popped)
        };
        if stack.is_empty() && self.threads.len() > super::KEPT_IDLE_THREADS {
            // An emptied stack stays for the thread's next call (no allocation per call) while
            // few threads are known; past that, an emptied one goes at once.
            self.threads.remove(&tid);
        }
        Some((call, popped))
    }

    /// Drops every open call of the threads `belongs` selects (their process exited).
    pub fn forget(&mut self, mut belongs: impl FnMut(&T) -> bool) {
        self.threads.retain(|_, stack| stack.first().is_some_and(|(_, v)| !belongs(v)));
    }

    /// Whether thread `tid` is inside an open call that encloses `frame` (one entered at a
    /// higher frame): the call at `frame` is nested in it.
    pub fn encloses(&self, tid: u32, frame: u64) -> bool {
        self.threads.get(&tid).is_some_and(|stack| stack.iter().any(|(open, _)| *open > frame))
    }

    /// Threads with a stack here, emptied ones included.
    pub fn threads_known(&self) -> usize {
        self.threads.len()
    }

    pub fn open_calls(&self) -> usize {
        self.threads.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_calls_pair_by_frame() {
        let mut stacks = CallStacks::default();
        assert!(stacks.enter(1, 0x1000, "outer").is_empty());
        assert!(stacks.enter(1, 0x0f00, "inner").is_empty());
        assert_eq!(stacks.exit(1, 0x0f00), Some(("inner", vec![])));
        assert_eq!(stacks.exit(1, 0x1000), Some(("outer", vec![])));
        assert_eq!(stacks.open_calls(), 0);
    }

    #[test]
    fn a_lost_exit_is_found_out_by_the_next_call_at_the_same_level() {
        let mut stacks = CallStacks::default();
        stacks.enter(1, 0x1000, "first");
        // Its exit was lost; the caller makes the next call from the same frame.
        assert_eq!(stacks.enter(1, 0x1000, "second"), vec!["first"]);
        assert_eq!(stacks.exit(1, 0x1000), Some(("second", vec![])));
    }

    #[test]
    fn a_lost_nested_exit_is_closed_with_its_caller() {
        let mut stacks = CallStacks::default();
        stacks.enter(1, 0x1000, "outer");
        stacks.enter(1, 0x0f00, "inner");
        assert_eq!(stacks.exit(1, 0x1000), Some(("outer", vec!["inner"])));
    }

    #[test]
    fn an_exit_without_entry_is_ignored() {
        let mut stacks = CallStacks::default();
        stacks.enter(1, 0x1000, "open");
        assert_eq!(stacks.exit(1, 0x0e00), None);
        assert_eq!(stacks.exit(2, 0x1000), None);
        assert_eq!(stacks.open_calls(), 1);
    }
}
