//! The process tree: descendants of a process, whether a new task is a process or a thread,
//! and which processes must never be traced (the agent itself, its own family, kernel threads).

use std::fs;

/// `PF_KTHREAD` in the `flags` field of `/proc/<pid>/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/<pid>/stat` after the parenthesised comm (which may itself hold spaces
/// and parentheses): state, ppid, pgrp, session, tty_nr, tpgid, flags...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    Some(after_comm.split_whitespace().map(str::to_string).collect())
}

/// The parent pid of `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Whether `pid` is a kernel thread (kthreadd and its children): no user code, no libraries,
/// nothing a uprobe could see. `None` when it is gone.
pub fn is_kernel_thread(pid: u32) -> Option<bool> {
    let flags: u64 = stat_fields(pid)?.get(6)?.parse().ok()?;
    Some(flags & PF_KTHREAD != 0)
}

/// `pid`'s ancestors, nearest first, up to init.
pub fn ancestors(pid: u32) -> Vec<u32> {
    let mut chain = Vec::new();
    let mut current = pid;
    while let Some(parent) = parent_of(current).filter(|&p| p != 0 && !chain.contains(&p)) {
        chain.push(parent);
        current = parent;
    }
    chain
}

/// Why `pid` must not be traced by the agent running as `agent_pid`, if it must not: the
/// agent itself (its own events would feed its own work), a process the agent started, or a
/// kernel thread. (What runs the agent, such as `sudo`, is left out by the caller, which knows
/// the agent's ancestors.)
pub fn never_traced(pid: u32, agent_pid: u32) -> Option<&'static str> {
    if pid == agent_pid {
        return Some("it is ddtrace-agent itself");
    }
    if is_kernel_thread(pid) == Some(true) {
        return Some("it is a kernel thread: it runs no user code to trace");
    }
    let chain = ancestors(pid);
    if chain.contains(&agent_pid) {
        return Some("it was started by ddtrace-agent itself");
    }
    None
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

/// Whether task `task` is a thread of process `tgid`: one path lookup, where reading the task's
/// status costs the kernel a page of text (a threaded server starts a thread per request).
pub fn is_thread_of(tgid: u32, task: u32) -> bool {
    task != tgid && std::path::Path::new(&format!("/proc/{tgid}/task/{task}")).exists()
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
    fn the_agent_its_children_and_kernel_threads_are_never_traced() {
        let me = std::process::id();
        assert!(never_traced(me, me).unwrap().contains("itself"));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(never_traced(child.id(), me).unwrap().contains("started by ddtrace-agent"));
        // kthreadd (pid 2) and its children are kernel threads.
        assert_eq!(is_kernel_thread(2), Some(true));
        assert!(never_traced(2, me).unwrap().contains("kernel thread"));
        assert_eq!(is_kernel_thread(me), Some(false));
        // Our parent is an ordinary process that we may trace.
        let parent = parent_of(me).unwrap();
        assert_eq!(never_traced(parent, me), None);
        assert_eq!(ancestors(child.id()).first(), Some(&me));
        child.kill().unwrap();
        child.wait().unwrap();
    }

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
        assert!(is_thread_of(me, live_thread));
        assert!(!is_thread_of(me, me) && !is_thread_of(me, child.id()));
        done_tx.send(()).unwrap();
        handle.join().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
