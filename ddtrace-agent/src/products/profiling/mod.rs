//! The profiling product: continuous CPU profiles of the traced processes, as dd-trace-py's
//! profiler makes them in-process, made here from outside.
//!
//! The kernel samples every thread of the traced processes on a CPU clock (the daemon starts the
//! sampler when this product runs); core hands each sample over as `cpu.sampled`, with the
//! context open on the thread. A worker thread unwinds and symbolizes the stacks, aggregates
//! them per upload period, and sends each period's profile to the agent's profiling intake (and
//! the whole run to `--profile-output` at exit). Samples taken in an open context carry its span
//! id and local root span id, which is how Datadog links profiles to traces (Code Hotspots).

mod aggregate;
mod flamegraph;
mod stacks;
mod worker;

use std::{path::PathBuf, time::Duration};

pub use worker::WorkerReport;

use self::worker::{ProfileSinks, ProfilerWorker};
use super::{Product, ProductConfig, ProductError};
use crate::{
    config::Setting,
    core::{CoreEvent, EventHub},
    intake::profile_exporter::ProfileExporter,
};

/// The longest `at_exit` waits for the last profile to be built and sent.
pub const EXIT_FLUSH_DEADLINE: Duration = Duration::from_secs(8);

/// The profiling settings, each with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfilingSettings {
    /// `DD_PROFILING_ENABLED`.
    pub enabled: Setting<bool>,
    /// `DD_PROFILING_SAMPLING_FREQUENCY`: CPU samples per second of CPU time, per thread.
    pub sampling_frequency_hz: Setting<u32>,
    /// `DD_PROFILING_UPLOAD_PERIOD`: seconds between uploads.
    pub upload_period_seconds: Setting<f64>,
}

impl ProfilingSettings {
    /// The CPU time each sample stands for.
    pub fn sampling_period(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 / u64::from(self.sampling_frequency_hz.value.max(1)))
    }
}

/// What the daemon hands the profiling product.
pub struct ProfilingInputs {
    pub settings: ProfilingSettings,
    /// The agent's profiling intake; `None` without the Datadog exporter.
    pub exporter: Option<ProfileExporter>,
    /// `--profile-output`: a `.pprof` or `.svg` file written at exit with the whole run.
    pub output: Option<PathBuf>,
    /// Node mode: a profile per process, under each one's identity.
    pub per_process: Option<crate::core::Identities>,
}

pub struct ProfilingProduct {
    settings: ProfilingSettings,
    sinks: Option<ProfileSinks>,
    worker: Option<ProfilerWorker>,
}

impl ProfilingProduct {
    pub fn new(inputs: ProfilingInputs) -> Self {
        let sinks = ProfileSinks { exporter: inputs.exporter, output: inputs.output, per_process: inputs.per_process };
        Self { settings: inputs.settings, sinks: Some(sinks), worker: None }
    }

    fn finish(&mut self, join: bool, when: &'static str) {
        if let Some(worker) = self.worker.take() {
            match worker.finish(if join { EXIT_FLUSH_DEADLINE } else { Duration::ZERO }) {
                Some(report) => tracing::info!(%report, "profiling: finished {when}"),
                None => tracing::warn!("profiling: the last profile was still being sent {when}; not waiting longer"),
            }
        }
    }
}

impl Product for ProfilingProduct {
    fn name(&self) -> &'static str {
        "profiling"
    }

    fn start(&mut self, hub: &mut EventHub) -> Result<(), ProductError> {
        let sinks =
            self.sinks.take().ok_or(ProductError::Start { product: "profiling", reason: "already started".into() })?;
        let upload_period = Duration::from_secs_f64(self.settings.upload_period_seconds.value);
        let worker = ProfilerWorker::spawn(sinks, upload_period, self.settings.sampling_period())
            .map_err(|e| ProductError::Start { product: "profiling", reason: e.to_string() })?;
        let samples = worker.sender();
        hub.on("cpu.sampled", move |event| {
            if let CoreEvent::CpuSampled(sample) = event {
                samples.send_sample(sample);
            }
        });
        let exits = worker.sender();
        hub.on("process.exited", move |event| {
            if let CoreEvent::ProcessExited(tgid) = event {
                exits.process_exited(*tgid);
            }
        });
        self.worker = Some(worker);
        Ok(())
    }

    /// A forked child is sampled like its parent (the kernel filter follows forks); its stacks
    /// are resolved against its own memory maps, read when its first sample arrives.
    fn restart(&mut self, _join: bool) -> Result<(), ProductError> {
        Ok(())
    }

    fn stop(&mut self, join: bool) -> Result<(), ProductError> {
        self.finish(join, "on stop");
        Ok(())
    }

    fn at_exit(&mut self, join: bool) -> Result<(), ProductError> {
        self.finish(join, "at exit");
        Ok(())
    }

    fn post_preload(&mut self) -> Result<(), ProductError> {
        Ok(())
    }

    fn enabled(&self) -> bool {
        self.settings.enabled.value
    }

    fn config(&self) -> Option<ProductConfig> {
        let s = &self.settings;
        Some(
            ProductConfig::new()
                .with("DD_PROFILING_ENABLED", s.enabled.value.to_string(), s.enabled.origin)
                .with(
                    "DD_PROFILING_SAMPLING_FREQUENCY",
                    s.sampling_frequency_hz.value.to_string(),
                    s.sampling_frequency_hz.origin,
                )
                .with(
                    "DD_PROFILING_UPLOAD_PERIOD",
                    s.upload_period_seconds.value.to_string(),
                    s.upload_period_seconds.origin,
                ),
        )
    }
}
