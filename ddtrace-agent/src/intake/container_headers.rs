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

use libdd_capabilities_impl::{HttpClientCapability, NativeCapabilities};

/// The container a sender speaks for, as its requests name it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerOfPayloads {
    /// `Datadog-Container-ID`.
    pub container_id: Option<String>,
    /// `Datadog-Entity-ID` (`ci-<id>` or `in-<cgroup inode>`).
    pub entity_id: Option<String>,
}

tokio::task_local! {
    /// Set around a libdatadog worker's task (telemetry, one per process): every request the
    /// task makes carries that process's container.
    pub static SPEAKS_FOR_CONTAINER: ContainerOfPayloads;
}

/// libdatadog's native HTTP client, adding the container of the task it runs in
/// ([`SPEAKS_FOR_CONTAINER`]) to each request: libdatadog's workers take their client as a
/// type, not a value, so the container travels with the task.
#[derive(Debug, Clone)]
pub struct ContainerAwareHttp(NativeCapabilities);

impl HttpClientCapability for ContainerAwareHttp {
    fn new_client() -> Self {
        Self(NativeCapabilities::new_client())
    }

    fn new_periodic() -> Self {
        Self(<NativeCapabilities as HttpClientCapability>::new_periodic())
    }

    fn request(
        &self,
        mut req: libdd_capabilities::Request<libdd_capabilities::Bytes>,
    ) -> impl std::future::Future<
        Output = Result<libdd_capabilities::Response<libdd_capabilities::Bytes>, libdd_capabilities::HttpError>,
    > + libdd_capabilities::MaybeSend {
        let _ = SPEAKS_FOR_CONTAINER.try_with(|container| {
            let headers = req.headers_mut();
            for (name, value) in
                [("datadog-container-id", &container.container_id), ("datadog-entity-id", &container.entity_id)]
            {
                if let Some(value) = value.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()) {
                    headers.insert(name, value);
                }
            }
        });
        self.0.request(req)
    }
}

impl libdd_capabilities::SleepCapability for ContainerAwareHttp {
    fn new() -> Self {
        Self(<NativeCapabilities as libdd_capabilities::SleepCapability>::new())
    }

    fn sleep(
        &self,
        duration: std::time::Duration,
    ) -> impl std::future::Future<Output = ()> + libdd_capabilities::MaybeSend {
        libdd_capabilities::SleepCapability::sleep(&self.0, duration)
    }
}
