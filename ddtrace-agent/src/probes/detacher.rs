//! Detaching uprobes away from the event loop.
//!
//! Closing a uprobe's perf event waits for the kernel to unregister it, which waits for RCU
//! grace periods: measured here, ~100 ms per link, and the kernel runs these one after another
//! whichever thread asks (closes from 16 threads finished ~100 ms apart). A process traced with
//! 15 links took 1.5 s to forget, and the event loop that did it held every other process's
//! events (and their traces) for that long: with recycled workers, traces reached the agent
//! seconds late. So links are dropped on one thread of their own, in the order they come.

use std::{
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::ProbeLinks;

pub struct Detacher {
    sender: Option<mpsc::Sender<ProbeLinks>>,
    thread: Option<JoinHandle<()>>,
}

impl Default for Detacher {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel::<ProbeLinks>();
        let thread = std::thread::Builder::new()
            .name("detach".into())
            .stack_size(64 * 1024)
            // Ends when the sender is gone (the daemon stops) and everything sent is dropped.
            .spawn(move || receiver.into_iter().for_each(drop))
            .ok();
        Self { sender: Some(sender), thread }
    }
}

impl Detacher {
    /// Detaches `links` soon, on the detach thread (at once, here, if it could not be started).
    pub fn detach(&self, links: ProbeLinks) {
        match (&self.sender, &self.thread) {
            (Some(sender), Some(_)) => {
                if let Err(mpsc::SendError(links)) = sender.send(links) {
                    drop(links);
                }
            }
            _ => drop(links),
        }
    }

    /// Waits, at most `timeout`, for everything handed over to be detached; what is left is
    /// detached by the kernel when the daemon exits.
    pub fn finish(&mut self, timeout: Duration) {
        drop(self.sender.take());
        let Some(thread) = self.thread.take() else { return };
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}
