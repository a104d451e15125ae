//! Calling libdatadog's blocking entry points safely from any thread.
//!
//! libdatadog's sync APIs drive a tokio runtime with `block_on`, and dropping a runtime blocks
//! until its tasks end; both panic when the calling thread is already inside a tokio runtime
//! (the daemon runs one of its own). The intake clients route such calls through
//! [`outside_tokio`], which costs nothing on the plain `std::thread`s they are meant for.

/// Runs `f` on the current thread, or on a scoped thread when the current one is inside a tokio
/// runtime, where blocking on (or dropping) another runtime would panic.
pub(crate) fn outside_tokio<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_on_a_runtime_from_inside_another() {
        let outer = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let value = outer.block_on(async {
            outside_tokio(|| {
                let inner = tokio::runtime::Builder::new_current_thread().build().unwrap();
                inner.block_on(async { 42 })
            })
        });
        assert_eq!(value, 42);
    }
}
