//! Detaching uprobes away from the event loop.
//!
//! Closing a uprobe's perf event waits for the kernel to unregister it, which waits for RCU
//! grace periods: measured here, ~100 ms per link, one after the other. A process traced with
//! 15 links took 1.5 s to forget, and the event loop that did it held every other process's
//! events (and their traces) for that long: with recycled workers, traces reached the agent
//! seconds late. Links are dropped on a pool of threads instead; concurrent detaches share
//! grace periods, so a burst of exits costs about one of them, and nobody waits for it.

use std::{
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::ProbeLinks;

/// Enough to detach a burst of exiting processes' links in about one grace period.
const THREADS: usize = 16;

pub struct Detacher {
    sender: Option<mpsc::Sender<ProbeLinks>>,
    threads: Vec<JoinHandle<()>>,
}

impl Default for Detacher {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel::<ProbeLinks>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..THREADS)
            .filter_map(|index| {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("detach-{index}"))
                    .stack_size(64 * 1024)
                    .spawn(move || loop {
                        // The lock is held only to take one item, not while it is dropped.
                        let next = receiver.lock().map(|r| r.recv());
                        match next {
                            Ok(Ok(links)) => drop(links),
                            _ => return, // the sender is gone: the daemon stops
                        }
                    })
                    .ok()
            })
            .collect();
        Self { sender: Some(sender), threads }
    }
}

impl Detacher {
    /// Detaches `links` soon, on another thread (at once, here, if none could be started).
    pub fn detach(&self, links: ProbeLinks) {
        for link in links.split() {
            match &self.sender {
                Some(sender) if !self.threads.is_empty() => {
                    if let Err(mpsc::SendError(link)) = sender.send(link) {
                        drop(link);
                    }
                }
                _ => drop(link),
            }
        }
    }

    /// Waits, at most `timeout`, for everything handed over to be detached.
    pub fn finish(&mut self, timeout: Duration) {
        drop(self.sender.take());
        let deadline = Instant::now() + timeout;
        for thread in self.threads.drain(..) {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}
