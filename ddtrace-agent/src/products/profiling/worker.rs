//! The profiler's own thread: unwinding, symbolization, aggregation and uploads happen here, off
//! the daemon's event loop, which only queues samples (bounded: a full queue drops and counts).

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use super::{
    aggregate::{ProfileWindow, ResolvedSample},
    flamegraph::write_profile_output,
    stacks::{StackResolver, UnwindCounts},
};
use crate::{
    core::{CpuSample, Identities, ProcessIdentity},
    intake::{container_headers::ContainerOfPayloads, profile_exporter::ProfileExporter},
};

/// Samples waiting for the worker. At 100 Hz on 64 busy CPUs that is 10 s of samples.
const QUEUE_CAPACITY: usize = 65_536;
/// How often the worker takes what is queued. It is not parked on the queue: a parked receiver
/// turns every sample the daemon's loop queues into a futex wake-up (a system call and a context
/// switch per sample, a tenth of the loop's time under load); waking on its own costs ten
/// wake-ups a second, and samples wait at most this long.
const READ_INTERVAL: Duration = Duration::from_millis(100);

/// Where profiles go.
pub struct ProfileSinks {
    pub exporter: Option<ProfileExporter>,
    pub output: Option<PathBuf>,
    /// Node mode: one profile per process, under its own identity (service, env, version,
    /// runtime id, container), instead of one for the whole target.
    pub per_process: Option<Identities>,
}

/// A process's profile of the current period, with its identity at its latest sample: what names
/// it if it has exited by the upload (a live one is named by its identity then).
struct ProcessWindow {
    identity: Arc<ProcessIdentity>,
    window: ProfileWindow,
}

enum Message {
    Sample(CpuSample),
    ProcessExited(u32),
    Finish,
}

/// Queues samples for the worker from the daemon's event loop; never blocks it.
#[derive(Clone)]
pub struct SampleSender {
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl SampleSender {
    pub fn send_sample(&self, sample: &CpuSample) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(Message::Sample(sample.clone())) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn process_exited(&self, tgid: u32) {
        // Only frees the process's caches: losing it to a full queue costs memory, not data.
        let _ = self.queue.try_send(Message::ProcessExited(tgid));
    }
}

/// What the profiler did over its life, logged when it finishes.
#[derive(Debug, Default, Clone)]
pub struct WorkerReport {
    pub samples: u64,
    pub dropped_queue_full: u64,
    pub uploads: u64,
    pub failed_uploads: u64,
    pub unwind: UnwindCounts,
    pub output_written: Option<PathBuf>,
}

impl fmt::Display for WorkerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "samples={} dropped_queue_full={} uploads={} failed_uploads={} unwind: {}",
            self.samples, self.dropped_queue_full, self.uploads, self.failed_uploads, self.unwind
        )?;
        if let Some(path) = &self.output_written {
            write!(f, "; profile written to {}", path.display())?;
        }
        Ok(())
    }
}

pub struct ProfilerWorker {
    sender: SampleSender,
    done: Receiver<WorkerReport>,
    _thread: JoinHandle<()>,
}

impl ProfilerWorker {
    /// Starts the worker: one profile per `upload_period`, each sample standing for
    /// `sampling_period` of CPU time.
    pub fn spawn(sinks: ProfileSinks, upload_period: Duration, sampling_period: Duration) -> std::io::Result<Self> {
        let (queue, samples) = mpsc::sync_channel(QUEUE_CAPACITY);
        let (report, done) = mpsc::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            sinks,
            upload_period,
            sampling_period,
            resolver: StackResolver::new(),
            thread_names: HashMap::new(),
            report: WorkerReport::default(),
            dropped: dropped.clone(),
        };
        let thread = std::thread::Builder::new().name("ddtrace-profiler".into()).spawn(move || {
            let _ = report.send(worker.run(samples));
        })?;
        Ok(Self { sender: SampleSender { queue, dropped }, done, _thread: thread })
    }

    pub fn sender(&self) -> SampleSender {
        self.sender.clone()
    }

    /// Sends the last profile (and writes the output file), waiting at most `deadline`.
    /// `None` when the worker did not finish in time.
    pub fn finish(self, deadline: Duration) -> Option<WorkerReport> {
        // Behind every queued sample, so they all make it into the last profile.
        let _ = self.sender.queue.send(Message::Finish);
        self.done.recv_timeout(deadline).ok()
    }
}

struct Worker {
    sinks: ProfileSinks,
    upload_period: Duration,
    sampling_period: Duration,
    resolver: StackResolver,
    thread_names: HashMap<(u32, u32), String>,
    report: WorkerReport,
    dropped: Arc<AtomicU64>,
}

impl Worker {
    fn run(mut self, samples: Receiver<Message>) -> WorkerReport {
        let mut window = ProfileWindow::new(SystemTime::now(), self.sampling_period);
        let mut processes: HashMap<u32, ProcessWindow> = HashMap::new();
        let mut whole_run =
            self.sinks.output.as_ref().map(|_| ProfileWindow::new(SystemTime::now(), self.sampling_period));
        let mut next_upload = Instant::now() + self.upload_period;
        'run: loop {
            std::thread::sleep(next_upload.saturating_duration_since(Instant::now()).min(READ_INTERVAL));
            loop {
                match samples.try_recv() {
                    Ok(Message::Sample(sample)) => {
                        let window = match self.process_window(&mut processes, &sample) {
                            Some(process) => &mut process.window,
                            None if self.sinks.per_process.is_some() => continue, // no identity: not selected
                            None => &mut window,
                        };
                        self.add(&sample, window, whole_run.as_mut())
                    }
                    Ok(Message::ProcessExited(tgid)) => {
                        self.resolver.forget(tgid);
                        self.thread_names.retain(|&(pid, _), _| pid != tgid);
                    }
                    Ok(Message::Finish) | Err(TryRecvError::Disconnected) => break 'run,
                    Err(TryRecvError::Empty) => break,
                }
                if Instant::now() >= next_upload {
                    break; // a queue that never empties must not hold the upload back
                }
            }
            if Instant::now() < next_upload {
                continue;
            }
            next_upload += self.upload_period;
            if self.sinks.exporter.is_some() {
                // One instant closes a window and opens the next: no gap, no overlap.
                let now = SystemTime::now();
                let next = ProfileWindow::new(now, self.sampling_period);
                self.upload(&std::mem::replace(&mut window, next), now);
                self.upload_processes(std::mem::take(&mut processes), now);
            }
        }
        // The process may have exited mid-period: its last samples still make a profile.
        if window.sample_count() > 0 {
            self.upload(&window, SystemTime::now());
        }
        self.upload_processes(processes, SystemTime::now());
        if let (Some(path), Some(whole_run)) = (&self.sinks.output, &whole_run) {
            match write_profile_output(path, whole_run, "ddtrace-agent CPU profile") {
                Ok(()) => self.report.output_written = Some(path.clone()),
                Err(error) => tracing::error!(%error, "profiling: --profile-output"),
            }
        }
        if self.sinks.exporter.is_none() && self.sinks.output.is_none() {
            print_top_functions(whole_run.as_ref().unwrap_or(&window));
        }
        self.report.dropped_queue_full = self.dropped.load(Ordering::Relaxed);
        self.report.unwind = self.resolver.counts;
        self.report
    }

    fn add(&mut self, sample: &CpuSample, window: &mut ProfileWindow, whole_run: Option<&mut ProfileWindow>) {
        let Some(frames) = self.resolver.resolve(sample) else { return };
        self.report.samples += 1;
        let thread_name = self
            .thread_names
            .entry((sample.tgid, sample.tid))
            .or_insert_with(|| read_thread_name(sample.tgid, sample.tid));
        let span = sample.active.map(|active| (active.id, active.root_id));
        if let Some(whole_run) = whole_run {
            // Without span labels: the whole run's file would otherwise grow with every request.
            whole_run.add(ResolvedSample { frames: frames.clone(), tid: sample.tid, thread_name, span: None });
        }
        window.add(ResolvedSample { frames, tid: sample.tid, thread_name, span });
    }

    /// Node mode: the window of the sample's process, opened at its first sample of the period.
    fn process_window<'w>(
        &self,
        processes: &'w mut HashMap<u32, ProcessWindow>,
        sample: &CpuSample,
    ) -> Option<&'w mut ProcessWindow> {
        let identities = self.sinks.per_process.as_ref()?;
        match processes.entry(sample.tgid) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                let process = entry.into_mut();
                // Who it is at its latest sample (an exec may have said more: its container).
                if let Some(identity) = identities.get(sample.tgid) {
                    process.identity = identity;
                }
                Some(process)
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                let identity = identities.get(sample.tgid)?;
                let window = ProfileWindow::new(SystemTime::now(), self.sampling_period);
                Some(entry.insert(ProcessWindow { identity, window }))
            }
        }
    }

    /// Each process's profile of the period, under its own identity.
    fn upload_processes(&mut self, processes: HashMap<u32, ProcessWindow>, end: SystemTime) {
        let Some(exporter) = self.sinks.exporter.clone() else { return };
        let identities = self.sinks.per_process.clone().unwrap_or_default();
        for (pid, ProcessWindow { identity, window }) in processes {
            if window.sample_count() == 0 {
                continue;
            }
            // Who it is now (an exec may have told more, its container say), else who it was.
            let identity = identities.get(pid).unwrap_or(identity);
            let mut tags = identity.tags.clone();
            if let Some(id) = &identity.container_id {
                tags.push(("container_id".into(), id.clone()));
            }
            match exporter.for_process(
                &identity.service,
                identity.env.as_deref(),
                identity.version.as_deref(),
                &identity.runtime_id,
                &tags,
                ContainerOfPayloads {
                    container_id: identity.container_id.clone(),
                    entity_id: identity.entity_id.clone(),
                },
            ) {
                Ok(exporter) => self.export(&exporter, &window, end),
                Err(error) => {
                    tracing::warn!(%error, service = %identity.service, "profiling: a process's profile is lost")
                }
            }
        }
    }

    fn upload(&mut self, window: &ProfileWindow, end: SystemTime) {
        let Some(exporter) = self.sinks.exporter.clone() else { return };
        if self.sinks.per_process.is_some() {
            return; // every sample went to its process's window
        }
        self.export(&exporter, window, end);
    }

    fn export(&mut self, exporter: &ProfileExporter, window: &ProfileWindow, end: SystemTime) {
        let profile = window.to_profile(end);
        match exporter.export(&profile) {
            Ok(()) => self.report.uploads += 1,
            Err(error) => {
                self.report.failed_uploads += 1;
                tracing::warn!(%error, samples = window.sample_count(), "profiling: upload failed; this period's profile is lost");
            }
        }
    }
}

/// The kernel's name of the thread (`comm`), or its id when it is gone.
fn read_thread_name(tgid: u32, tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/comm"))
        .map(|name| name.trim_end().to_string())
        .unwrap_or_else(|_| format!("thread {tid}"))
}

/// Without an agent or an output file (the console exporter), the profile's gist on stderr.
fn print_top_functions(window: &ProfileWindow) {
    let total = window.sample_count().max(1) as f64;
    eprintln!("ddtrace-agent: CPU profile, {} samples; functions on CPU most often:", window.sample_count());
    for (function, count) in window.top_self(10) {
        eprintln!("  {:5.1}%  {function}", count as f64 * 100.0 / total);
    }
}
