//! Samples summed by (stack, thread, span): one profile window's worth, turned into the intake's
//! profile model when the window closes.

use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap as HashMap;

use crate::intake::profile_exporter::{Frame, Period, ProfileData, Sample, SampleType, SpanLink};

/// Index of a frame in [`FrameTable`].
type FrameId = u32;

/// Each distinct frame once; stacks are lists of ids.
#[derive(Default)]
struct FrameTable {
    frames: Vec<Frame>,
    ids: HashMap<Frame, FrameId>,
}

impl FrameTable {
    fn intern(&mut self, frame: Frame) -> FrameId {
        if let Some(&id) = self.ids.get(&frame) {
            return id;
        }
        let id = self.frames.len() as FrameId;
        self.frames.push(frame.clone());
        self.ids.insert(frame, id);
        id
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SampleKey {
    /// Leaf first.
    stack: Box<[FrameId]>,
    tid: u32,
    span: Option<(u64, u64)>,
}

/// One sample as the worker hands it over.
pub struct ResolvedSample<'a> {
    pub frames: Vec<Frame>,
    pub tid: u32,
    pub thread_name: &'a str,
    /// (span id, local root span id) of the context open on the thread.
    pub span: Option<(u64, u64)>,
}

/// Samples of one window, summed.
pub struct ProfileWindow {
    start: SystemTime,
    period: Duration,
    frames: FrameTable,
    counts: HashMap<SampleKey, i64>,
    thread_names: HashMap<u32, String>,
    samples: u64,
}

impl ProfileWindow {
    /// An empty window opening now, for samples that each stand for `period` of CPU time.
    pub fn new(start: SystemTime, period: Duration) -> Self {
        Self {
            start,
            period,
            frames: FrameTable::default(),
            counts: HashMap::default(),
            thread_names: HashMap::default(),
            samples: 0,
        }
    }

    /// Samples added so far.
    pub fn sample_count(&self) -> u64 {
        self.samples
    }

    pub fn add(&mut self, sample: ResolvedSample<'_>) {
        let stack: Box<[FrameId]> = sample.frames.into_iter().map(|f| self.frames.intern(f)).collect();
        *self.counts.entry(SampleKey { stack, tid: sample.tid, span: sample.span }).or_default() += 1;
        self.thread_names.entry(sample.tid).or_insert_with(|| sample.thread_name.to_string());
        self.samples += 1;
    }

    /// The window as a profile (sample count and CPU time per stack), closed at `end`.
    pub fn to_profile(&self, end: SystemTime) -> ProfileData {
        let cpu_time = SampleType::new("cpu-time", "nanoseconds");
        let mut profile =
            ProfileData::new(vec![SampleType::new("cpu-samples", "count"), cpu_time.clone()], self.start, end);
        let period_ns = self.period.as_nanos() as i64;
        profile.period = Some(Period { sample_type: cpu_time, value: period_ns });
        profile.samples = self
            .counts
            .iter()
            .map(|(key, &count)| Sample {
                frames: key.stack.iter().map(|&id| self.frames.frames[id as usize].clone()).collect(),
                values: vec![count, count * period_ns],
                thread_id: Some(i64::from(key.tid)),
                thread_name: self.thread_names.get(&key.tid).cloned(),
                span: key.span.map(|(span_id, local_root_span_id)| SpanLink { span_id, local_root_span_id }),
            })
            .collect();
        profile
    }

    /// Stacks root first as `;`-joined function names with their sample counts (the "folded"
    /// format flame graphs are drawn from), threads and spans merged.
    pub fn folded_stacks(&self) -> Vec<(String, i64)> {
        let mut folded: HashMap<String, i64> = HashMap::default();
        for (key, &count) in &self.counts {
            let names: Vec<&str> =
                key.stack.iter().rev().map(|&id| self.frames.frames[id as usize].function.as_ref()).collect();
            *folded.entry(names.join(";")).or_default() += count;
        }
        let mut folded: Vec<(String, i64)> = folded.into_iter().collect();
        folded.sort();
        folded
    }

    /// Functions by samples in which they are the leaf, most first.
    pub fn top_self(&self, limit: usize) -> Vec<(String, i64)> {
        let mut by_leaf: HashMap<&str, i64> = HashMap::default();
        for (key, &count) in &self.counts {
            if let Some(&leaf) = key.stack.first() {
                *by_leaf.entry(self.frames.frames[leaf as usize].function.as_ref()).or_default() += count;
            }
        }
        let mut top: Vec<(String, i64)> = by_leaf.into_iter().map(|(name, count)| (name.to_string(), count)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(limit);
        top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(names: &[&str]) -> Vec<Frame> {
        names.iter().map(|n| Frame::new(*n, "/bin/app")).collect()
    }

    #[test]
    fn identical_samples_are_summed_and_keep_their_labels() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut window = ProfileWindow::new(start, Duration::from_millis(10));
        for _ in 0..3 {
            window.add(ResolvedSample {
                frames: stack(&["c", "b", "main"]),
                tid: 7,
                thread_name: "app",
                span: Some((5, 1)),
            });
        }
        window.add(ResolvedSample { frames: stack(&["c", "b", "main"]), tid: 7, thread_name: "app", span: None });
        window.add(ResolvedSample { frames: stack(&["idle", "main"]), tid: 8, thread_name: "worker", span: None });
        let profile = window.to_profile(start + Duration::from_secs(60));
        assert_eq!(profile.samples.len(), 3);
        let in_span = profile.samples.iter().find(|s| s.span.is_some()).unwrap();
        assert_eq!(in_span.values, vec![3, 30_000_000]);
        assert_eq!(in_span.span, Some(SpanLink { span_id: 5, local_root_span_id: 1 }));
        assert_eq!(in_span.thread_name.as_deref(), Some("app"));
        assert_eq!(&*in_span.frames[0].function, "c");
        assert_eq!(window.folded_stacks(), vec![("main;b;c".to_string(), 4), ("main;idle".to_string(), 1)]);
        assert_eq!(window.top_self(1), vec![("c".to_string(), 4)]);
        assert_eq!(window.sample_count(), 5);
    }
}
