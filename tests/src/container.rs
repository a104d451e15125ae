//! Container-like processes without a container engine: cgroups named as Docker names them
//! (cgroup v1 `memory/docker/<id>` and v2 `system.slice/docker-<id>.scope`, the hybrid layout of
//! these machines), so `/proc/<pid>/cgroup` reads like a container's; pid and mount namespaces
//! come from `unshare` (see [`FakeContainer::command_prefix`]).

use std::path::PathBuf;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

pub struct FakeContainer {
    pub id: String,
    dirs: Vec<PathBuf>,
}

impl FakeContainer {
    /// A new container with a random 64-hex-digit id.
    pub fn create() -> Self {
        let id: String = (0..4).map(|_| format!("{:016x}", random_u64())).collect();
        let candidates = [
            PathBuf::from(CGROUP_ROOT).join("memory/docker").join(&id),
            PathBuf::from(CGROUP_ROOT).join("unified/system.slice").join(format!("docker-{id}.scope")),
        ];
        let mut dirs = Vec::new();
        for dir in candidates {
            if dir.parent().is_some_and(|parent| parent.parent().is_some_and(|p| p.exists())) {
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
                dirs.push(dir);
            }
        }
        assert!(!dirs.is_empty(), "no cgroup hierarchy under {CGROUP_ROOT} to make a container in");
        Self { id, dirs }
    }

    /// A shell prefix that moves the shell into this container's cgroups, then runs the rest of
    /// the command in new pid and mount namespaces: `sh -c '<prefix> python3 app.py'`.
    pub fn command_prefix(&self) -> String {
        format!("{} unshare --pid --fork --mount-proc --kill-child", self.join_prefix())
    }

    /// A shell prefix that moves the shell into this container's cgroups and execs the rest of
    /// the command there, in the host's namespaces (a DaemonSet pod with `hostPID`).
    pub fn join_prefix(&self) -> String {
        let moves: Vec<String> = self.dirs.iter().map(|d| format!("echo $$ > {}/cgroup.procs;", d.display())).collect();
        format!("{} exec", moves.join(" "))
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Whatever still runs in it goes back to the parent so the folder can be removed.
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                let parent = dir.parent().unwrap().parent().unwrap().join("cgroup.procs");
                for pid in procs.lines() {
                    let _ = std::fs::write(&parent, pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    hasher.finish()
}
