//! libdatadog adds the SENDER's container to every request it makes (`Datadog-Container-ID`,
//! `Datadog-Entity-ID`, read from `/proc/self/cgroup`). An in-process tracer is in its app's
//! container; this daemon is not: in a DaemonSet those headers would name the agent's own pod,
//! and the Datadog agent would tag every service's traces with it. The daemon sets the container
//! of the processes each payload speaks for itself, so libdatadog's reader is pointed at a file
//! with no cgroup in it, once, before any request is made.

/// A file with no cgroup line: libdatadog then finds no container of its own.
const NO_CGROUP: &str = "/dev/null";

/// Stops libdatadog from sending this daemon's own container. Call before any exporter is built
/// (libdatadog reads the file once and keeps the answer).
pub fn stop_sender_container_headers() {
    libdd_common::entity_id::set_cgroup_file(NO_CGROUP.to_string());
    libdd_common_v1::entity_id::set_cgroup_file(NO_CGROUP.to_string());
}
