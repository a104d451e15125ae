//! A process's container, as the Datadog agent needs it to tag what the process sends: the
//! container id found in `/proc/<pid>/cgroup` (Docker, containerd, CRI-O, Kubernetes, ECS; cgroup
//! v1 and v2), the pod it belongs to when the path says so, and otherwise the inode of its cgroup
//! directory (the agent maps `in-<inode>` entity ids to containers itself).
//!
//! In-process tracers read their own `/proc/self/cgroup`; a node agent speaks for other processes,
//! so it reads theirs (libdatadog's helpers only read the sender's).

use std::{os::unix::fs::MetadataExt, path::Path};

/// Where a process runs, as far as its cgroups tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    /// The container runtime's id (64 hex digits for Docker, containerd and CRI-O).
    pub id: Option<String>,
    /// The Kubernetes pod's uid, when the cgroup path is a kubelet's.
    pub pod_uid: Option<String>,
    /// The inode of the process's cgroup directory, when no id is in the path.
    pub cgroup_inode: Option<u64>,
}

impl Container {
    /// Reads `/proc/<pid>/cgroup` and, when no id is in it, stats the cgroup directory.
    pub fn of(pid: u32) -> Self {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return Self::default() };
        let mut container = Self::from_cgroup_file(&text);
        if container.id.is_none() {
            container.cgroup_inode = cgroup_directory_inode(&text, Path::new("/sys/fs/cgroup"));
        }
        container
    }

    /// The container id and pod of a `/proc/<pid>/cgroup` text: the id is the last path element
    /// that carries one, whichever hierarchy line says it.
    pub fn from_cgroup_file(text: &str) -> Self {
        let mut container = Self::default();
        for line in text.lines() {
            let Some(path) = cgroup_path(line) else { continue };
            for element in path.split('/').rev() {
                if container.id.is_none() {
                    container.id = container_id_in(element);
                }
                if container.pod_uid.is_none() {
                    container.pod_uid = pod_uid_in(element);
                }
            }
        }
        container
    }

    /// The `Datadog-Entity-ID` value: `ci-<container id>`, else `in-<cgroup inode>`.
    pub fn entity_id(&self) -> Option<String> {
        match (&self.id, self.cgroup_inode) {
            (Some(id), _) => Some(format!("ci-{id}")),
            (None, Some(inode)) => Some(format!("in-{inode}")),
            (None, None) => None,
        }
    }

    /// Whether anything tells the agent where the process runs.
    pub fn is_known(&self) -> bool {
        self.id.is_some() || self.cgroup_inode.is_some()
    }
}

/// The path of one line, `hierarchy-id:controllers:path`.
fn cgroup_path(line: &str) -> Option<&str> {
    let mut fields = line.splitn(3, ':');
    let (_, _, path) = (fields.next()?, fields.next()?, fields.next()?);
    Some(path)
}

/// A container id in one path element: 64 hex digits (`<id>`, `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`), or an ECS task's
/// `<32 hex>-<digits>`.
fn container_id_in(element: &str) -> Option<String> {
    let name = element.strip_suffix(".scope").unwrap_or(element);
    let candidate = name.rsplit(['-', ':']).next()?;
    if candidate.len() == 64 && is_lower_hex(candidate) {
        return Some(candidate.to_string());
    }
    // ECS: `<32 hex>-<digits>` is the whole element.
    if let Some((task, number)) = name.split_once('-') {
        if task.len() == 32 && is_lower_hex(task) && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
            return Some(name.to_string());
        }
    }
    None
}

/// A pod uid in one path element: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid with _>.slice` (systemd driver).
fn pod_uid_in(element: &str) -> Option<String> {
    let name = element.strip_suffix(".slice").unwrap_or(element);
    let (_, uid) = name.rsplit_once("pod")?;
    let uid = uid.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, len)| group.len() == len && is_lower_hex(group))
}

/// The inode of the process's cgroup directory: the v2 (unified) hierarchy's, else the v1
/// memory controller's, as the Datadog agent resolves `in-` entity ids.
fn cgroup_directory_inode(text: &str, mount: &Path) -> Option<u64> {
    let lines: Vec<&str> = text.lines().collect();
    let unified = lines.iter().find(|line| line.starts_with("0::")).and_then(|line| cgroup_path(line));
    let memory = lines
        .iter()
        .find(|line| line.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "memory")))
        .and_then(|line| cgroup_path(line));
    // The root cgroup is the host's: it says nothing of a container.
    let below_root = |path: &&str| !path.trim_start_matches('/').is_empty();
    let (unified, memory) = (unified.filter(below_root), memory.filter(below_root));
    let candidates = [
        unified.map(|path| mount.join(path.trim_start_matches('/'))),
        unified.map(|path| mount.join("unified").join(path.trim_start_matches('/'))),
        memory.map(|path| mount.join("memory").join(path.trim_start_matches('/'))),
    ];
    candidates.into_iter().flatten().find_map(|dir| std::fs::metadata(dir).ok().map(|m| m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860";

    #[test]
    fn docker_on_cgroup_v1() {
        let text = format!("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n0::/system.slice/docker.service\n");
        let container = Container::from_cgroup_file(&text);
        assert_eq!(container.id.as_deref(), Some(ID));
        assert_eq!(container.entity_id(), Some(format!("ci-{ID}")));
    }

    #[test]
    fn systemd_scopes_of_docker_containerd_and_crio_on_cgroup_v2() {
        for element in [format!("docker-{ID}.scope"), format!("cri-containerd-{ID}.scope"), format!("crio-{ID}.scope")]
        {
            let text = format!("0::/system.slice/{element}\n");
            assert_eq!(Container::from_cgroup_file(&text).id.as_deref(), Some(ID), "{element}");
        }
    }

    #[test]
    fn kubernetes_pods_with_either_cgroup_driver() {
        let cgroupfs = format!("0::/kubepods/burstable/pod2d3da189-6407-48e3-9ab6-78188d75e609/{ID}\n");
        let container = Container::from_cgroup_file(&cgroupfs);
        assert_eq!(container.id.as_deref(), Some(ID));
        assert_eq!(container.pod_uid.as_deref(), Some("2d3da189-6407-48e3-9ab6-78188d75e609"));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2d3da189_6407_48e3_9ab6_78188d75e609.slice/cri-containerd-{ID}.scope\n"
        );
        let container = Container::from_cgroup_file(&systemd);
        assert_eq!(container.id.as_deref(), Some(ID));
        assert_eq!(container.pod_uid.as_deref(), Some("2d3da189-6407-48e3-9ab6-78188d75e609"));
    }

    #[test]
    fn ecs_task_ids() {
        let text = "9:memory:/ecs/55091c13-b8cf-4801-b527-f4601742204d/432624d2150b349fe35ba397284dea788c2bf66b885d14dfc1569b01890ca7da\n";
        assert_eq!(
            Container::from_cgroup_file(text).id.as_deref(),
            Some("432624d2150b349fe35ba397284dea788c2bf66b885d14dfc1569b01890ca7da")
        );
        let fargate = "1:name=systemd:/ecs/34dc0b5e626f2c5c4c5170e34b10e765-1234567890\n";
        assert_eq!(
            Container::from_cgroup_file(fargate).id.as_deref(),
            Some("34dc0b5e626f2c5c4c5170e34b10e765-1234567890")
        );
    }

    #[test]
    fn a_host_process_has_no_container_id() {
        let text = "12:memory:/user.slice\n0::/user.slice/user-1000.slice/session-2.scope\n";
        let container = Container::from_cgroup_file(text);
        assert_eq!(container, Container::default());
        assert_eq!(container.entity_id(), None);
    }

    #[test]
    fn without_an_id_the_cgroup_directory_inode_is_the_entity() {
        let mount = std::env::temp_dir().join(format!("ddtrace-cgroup-test-{}", std::process::id()));
        let dir = mount.join("unified/system.slice/app.service");
        std::fs::create_dir_all(&dir).unwrap();
        let inode = std::fs::metadata(&dir).unwrap().ino();
        let found = cgroup_directory_inode("0::/system.slice/app.service\n", &mount);
        std::fs::remove_dir_all(&mount).unwrap();
        assert_eq!(found, Some(inode));
        assert_eq!(Container { cgroup_inode: found, ..Default::default() }.entity_id(), Some(format!("in-{inode}")));
        // The root cgroup is everyone's: no entity.
        assert_eq!(cgroup_directory_inode("0::/\n", &mount), None);
    }
}
