//! The process tree: descendants of a process, and whether a new task is a process or a thread.

use std::fs;

/// The parent pid of `pid`, from `/proc/<pid>/stat` (the field after the parenthesised comm,
/// which may itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant process of `root` (children, grandchildren...), e.g. the workers a
/// gunicorn master forked before the agent attached.
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        index += 1;
    }
    found.remove(0);
    found
}

/// Whether task `pid` leads its own thread group (a process), rather than being a thread of
/// another. `None` when it is already gone.
pub fn is_process(pid: u32) -> Option<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let tgid: u32 = status.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse().ok()?;
    Some(tgid == pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_children_and_tells_threads_from_processes() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let me = std::process::id();
        assert!(descendants(me).contains(&child.id()));
        assert_eq!(is_process(child.id()), Some(true));
        let thread_id = std::thread::spawn(|| unsafe { libc::gettid() } as u32).join().unwrap();
        // The thread is gone: its id no longer resolves, or resolves to our process.
        assert_ne!(is_process(thread_id), Some(true));
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            done_rx.recv().unwrap();
        });
        let live_thread = rx.recv().unwrap();
        assert_eq!(is_process(live_thread), Some(false));
        done_tx.send(()).unwrap();
        handle.join().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
