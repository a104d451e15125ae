//! The "traps only" phase of a benchmark: the traced process's bit cleared in the agent's
//! `TRACKED_PROCESSES` map, so that every one of the agent's programs leaves at its first check
//! while its uprobes stay in place. What the target then pays is the probes' traps and the
//! programs' entry: the floor under what tracing costs, measured in the same run as the rest.
//!
//! The map is found among the agent's own descriptors (`/proc/<agent>/fdinfo`, `map_id`), by
//! its name as the kernel keeps it (15 characters), and updated with the `bpf` system call.

use std::{fs, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

use anyhow::{bail, Context, Result};

/// `TRACKED_PROCESSES`, cut to the 15 characters of a kernel object name.
const MAP_NAME: &[u8] = b"TRACKED_PROCESS";

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `union bpf_attr` is larger than any of the commands' members used here; zeroed past them.
const ATTR_BYTES: usize = 128;
/// Where `struct bpf_map_info` keeps the name (after type, id, key and value size, max
/// entries and flags, six u32s).
const INFO_NAME_OFFSET: usize = 24;

/// Clears `pid`'s bit in the `TRACKED_PROCESSES` map of agent `agent_pid`; an error if it was
/// not set (then the agent does not trace `pid`, and the phase would measure something else).
pub fn clear(agent_pid: u32, pid: u32) -> Result<()> {
    let map = tracked_processes_map(agent_pid)?;
    let word = read_word(&map, pid)?;
    if word & bit(pid) == 0 {
        bail!("agent {agent_pid} does not trace process {pid}: its bit is not set");
    }
    let key = (pid / 64).to_ne_bytes();
    let cleared = (word & !bit(pid)).to_ne_bytes();
    let mut attr = element_attr(&map, &key);
    attr[16..24].copy_from_slice(&(cleared.as_ptr() as u64).to_ne_bytes());
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("could not write the traced-process bitmap")?;
    Ok(())
}

/// Whether `pid`'s bit is set in agent `agent_pid`'s `TRACKED_PROCESSES` map (to check, after
/// a phase, that the agent did not set it again).
pub fn is_set(agent_pid: u32, pid: u32) -> Result<bool> {
    let map = tracked_processes_map(agent_pid)?;
    Ok(read_word(&map, pid)? & bit(pid) != 0)
}

fn bit(pid: u32) -> u64 {
    1u64 << (pid % 64)
}

fn read_word(map: &OwnedFd, pid: u32) -> Result<u64> {
    let key = (pid / 64).to_ne_bytes();
    let mut word = [0u8; 8];
    let mut attr = element_attr(map, &key);
    attr[16..24].copy_from_slice(&(word.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("could not read the traced-process bitmap")?;
    Ok(u64::from_ne_bytes(word))
}

/// The attributes of a lookup or an update of `key` in `map`, the value's pointer left to fill.
fn element_attr(map: &OwnedFd, key: &[u8; 4]) -> [u8; ATTR_BYTES] {
    let mut attr = [0u8; ATTR_BYTES];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    attr
}

fn tracked_processes_map(agent_pid: u32) -> Result<OwnedFd> {
    let dir = format!("/proc/{agent_pid}/fdinfo");
    let entries = fs::read_dir(&dir).with_context(|| format!("could not list {dir}"))?;
    for entry in entries.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else { continue };
        let Some(id) = info.lines().find_map(|line| line.strip_prefix("map_id:")?.trim().parse::<u32>().ok()) else {
            continue;
        };
        let mut attr = [0u8; ATTR_BYTES];
        attr[0..4].copy_from_slice(&id.to_ne_bytes());
        let Ok(fd) = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr) else { continue };
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if map_name(&fd).is_ok_and(|name| name.as_slice() == MAP_NAME) {
            return Ok(fd);
        }
    }
    bail!("agent {agent_pid} holds no TRACKED_PROCESSES map")
}

fn map_name(fd: &OwnedFd) -> Result<Vec<u8>> {
    let mut info = [0u8; 96];
    let mut attr = [0u8; ATTR_BYTES];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("could not read a map's information")?;
    let name = &info[INFO_NAME_OFFSET..INFO_NAME_OFFSET + 16];
    Ok(name.iter().copied().take_while(|&byte| byte != 0).collect())
}

fn bpf(command: libc::c_long, attr: &mut [u8; ATTR_BYTES]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` of the command's layout, its pointers to live
    // buffers of the sizes the map and the info call expect.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), ATTR_BYTES as libc::c_uint) };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result as i32)
    }
}
