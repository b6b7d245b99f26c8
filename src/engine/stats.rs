//! Counters of one pipeline: kept as atomics for the progress line, the
//! summary and the status page, mirrored into Prometheus metrics when an
//! exporter is installed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowgate_sdk::{AckTracker, Done, RefusalClass, Rejected};
use metrics::{Counter, Gauge, Histogram};

pub struct Stats {
    pipeline: String,
    started: Instant,
    records_in: AtomicU64,
    records_out: AtomicU64,
    rejected: AtomicU64,
    dead_lettered: AtomicU64,
    m_in: Counter,
    m_out: Counter,
    m_rejected: Counter,
    m_dead_lettered: Counter,
    m_write_seconds: Histogram,
    m_records_in_flight: Gauge,
    m_batches_in_flight: Gauge,
    m_end_to_end: Histogram,
    /// Batches waiting before the transforms and before the sink.
    pub(crate) m_queue_transform: Gauge,
    pub(crate) m_queue_sink: Gauge,
    pub(crate) m_sink_write: Histogram,
    pub(crate) m_sink_commit: Histogram,
    /// By stage and class: refusals, and those dead-lettered.
    by_class: Mutex<HashMap<(Arc<str>, RefusalClass), RefusalCounters>>,
    recent: Mutex<VecDeque<Refusal>>,
    history: Mutex<VecDeque<Sample>>,
    /// The run's acknowledgements, read when the figures are published.
    tracker: OnceLock<Weak<AckTracker>>,
}

/// Refusals of one stage and class, and those of them dead-lettered.
type RefusalCounters = (Counter, Counter);

/// A record refused lately, as the status page lists it.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub at: SystemTime,
    pub stage: Arc<str>,
    pub class: RefusalClass,
    pub reason: String,
}

/// The counters at one moment, for the status page's chart.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at_ms: u64,
    pub records_in: u64,
    pub records_out: u64,
}

/// Refusals kept for the status page (one per batch: the last of it).
const RECENT_REFUSALS: usize = 8;
/// Samples kept for the status page: 10 minutes at one per 2 s.
pub const HISTORY: usize = 300;
/// A reason longer than this is cut on the status page.
const REASON_CHARS: usize = 300;

/// Totals at the end of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub records_in: u64,
    pub records_out: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
    pub elapsed: Duration,
}

impl Stats {
    pub fn new(pipeline: &str) -> Self {
        let labels = [("pipeline", pipeline.to_string())];
        let stage = |stage: &'static str| [("pipeline", pipeline.to_string()), ("stage", stage.to_string())];
        let queue = |queue: &'static str| [("pipeline", pipeline.to_string()), ("queue", queue.to_string())];
        Stats {
            pipeline: pipeline.to_string(),
            started: Instant::now(),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            m_in: metrics::counter!("flowgate_records_in_total", &labels),
            m_out: metrics::counter!("flowgate_records_out_total", &labels),
            m_rejected: metrics::counter!("flowgate_records_rejected_total", &labels),
            m_dead_lettered: metrics::counter!("flowgate_records_dead_lettered_total", &labels),
            m_write_seconds: metrics::histogram!("flowgate_sink_batch_seconds", &labels),
            m_records_in_flight: metrics::gauge!("flowgate_records_in_flight", &labels),
            m_batches_in_flight: metrics::gauge!("flowgate_batches_in_flight", &labels),
            m_end_to_end: metrics::histogram!("flowgate_end_to_end_seconds", &labels),
            m_queue_transform: metrics::gauge!("flowgate_queue_batches", &queue("transform")),
            m_queue_sink: metrics::gauge!("flowgate_queue_batches", &queue("sink")),
            m_sink_write: metrics::histogram!("flowgate_stage_seconds", &stage("sink.write")),
            m_sink_commit: metrics::histogram!("flowgate_stage_seconds", &stage("sink.commit")),
            by_class: Mutex::default(),
            recent: Mutex::default(),
            history: Mutex::default(),
            tracker: OnceLock::new(),
        }
    }

    /// The run's acknowledgements, whose records in flight [`Stats::publish`] shows.
    pub fn track(&self, tracker: &Arc<AckTracker>) {
        let _ = self.tracker.set(Arc::downgrade(tracker));
    }

    /// Sets the gauges read from the acknowledgements: records and batches
    /// in flight, and the lag in time (`flowgate_lag_seconds`): the age of
    /// the oldest record read and not yet acknowledged, by its source
    /// timestamp (or since it was read), 0 with nothing in flight. Called on
    /// a timer rather than at each batch, whose completions on several
    /// threads would set the gauges out of order.
    pub fn publish(&self) {
        let Some(tracker) = self.tracker.get().and_then(Weak::upgrade) else { return };
        self.m_records_in_flight.set(tracker.records_in_flight() as f64);
        self.m_batches_in_flight.set(tracker.in_flight() as f64);
        let age = tracker.oldest_pending().map_or(Duration::ZERO, |(since, oldest_ms)| age(since, oldest_ms));
        flowgate_sdk::health::lag_seconds(&self.pipeline, age.as_secs_f64());
    }

    /// The time one call of a transform takes, under its stage name.
    pub fn stage_histogram(&self, stage: &str) -> Histogram {
        metrics::histogram!("flowgate_stage_seconds", "pipeline" => self.pipeline.clone(), "stage" => stage.to_string())
    }

    /// A batch is done: its written records count now, and its end-to-end
    /// latency is the time since its oldest record's source timestamp (or,
    /// without one, since it was read).
    pub fn done(&self, d: &Done) {
        self.records_out.fetch_add(d.written, Relaxed);
        self.m_out.increment(d.written);
        self.m_end_to_end.record(age(d.since, d.oldest_ms).as_secs_f64());
    }

    /// The counters of refusals and dead letters of `stage` and `class`.
    fn by_class(&self, stage: &Arc<str>, class: RefusalClass) -> RefusalCounters {
        let mut by_class = self.by_class.lock().unwrap_or_else(|p| p.into_inner());
        let counters = by_class.entry((Arc::clone(stage), class)).or_insert_with(|| {
            let labels = [
                ("pipeline", self.pipeline.clone()),
                ("stage", stage.to_string()),
                ("class", class.as_str().to_string()),
            ];
            (
                metrics::counter!("flowgate_refusals_total", &labels),
                metrics::counter!("flowgate_dead_letters_total", &labels),
            )
        });
        counters.clone()
    }

    /// Counts refused records by stage and class, and keeps the last one
    /// for the status page.
    pub fn refused(&self, rejected: &[Rejected]) {
        for r in rejected {
            self.by_class(&r.stage, r.class).0.increment(1);
        }
        if let Some(r) = rejected.last() {
            let reason = match r.reason.char_indices().nth(REASON_CHARS) {
                Some((cut, _)) => format!("{}…", &r.reason[..cut]),
                None => r.reason.clone(),
            };
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT_REFUSALS {
                recent.pop_front();
            }
            recent.push_back(Refusal { at: SystemTime::now(), stage: Arc::clone(&r.stage), class: r.class, reason });
        }
    }

    /// Counts dead letters written, by the stage and class of their refusal.
    pub fn dead_letters(&self, classes: &[(Arc<str>, RefusalClass)]) {
        for (stage, class) in classes {
            self.by_class(stage, *class).1.increment(1);
        }
    }

    /// The last refusals, oldest first.
    pub fn recent_refusals(&self) -> Vec<Refusal> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Takes a sample of the counters for the status page's chart.
    pub fn sample(&self) {
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64);
        let s = self.summary();
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(Sample { at_ms, records_in: s.records_in, records_out: s.records_out });
    }

    /// The samples taken, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    pub fn read(&self, n: u64) {
        self.records_in.fetch_add(n, Relaxed);
        self.m_in.increment(n);
    }

    /// A batch was delivered to the sink in `took`; its records count as
    /// written once the batch is acknowledged ([`Stats::done`]).
    pub fn delivered(&self, took: Duration) {
        self.m_write_seconds.record(took.as_secs_f64());
    }

    pub fn rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Relaxed);
        self.m_rejected.increment(n);
    }

    pub fn dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Relaxed);
        self.m_dead_lettered.increment(n);
    }

    pub fn summary(&self) -> Summary {
        Summary {
            records_in: self.records_in.load(Relaxed),
            records_out: self.records_out.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            elapsed: self.started.elapsed(),
        }
    }
}

/// How old records are: since their source timestamp `oldest_ms` (ms since
/// the epoch) or, without one, since they were read (`since`). A source clock
/// ahead of ours is not a negative age.
fn age(since: Instant, oldest_ms: Option<i64>) -> Duration {
    match oldest_ms {
        Some(ms) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis() as i64);
            Duration::from_millis(now.saturating_sub(ms).max(0) as u64)
        }
        None => since.elapsed(),
    }
}

/// `1234567` as `1.23M`, for the progress line.
pub fn compact(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}G", n / 1e9),
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n if n >= 1e4 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

impl Summary {
    /// One line: totals, and the rate since `previous` (or since the start).
    pub fn line(&self, previous: Option<&Summary>) -> String {
        let (base_out, base_t) = previous.map_or((0, Duration::ZERO), |p| (p.records_out, p.elapsed));
        let secs = (self.elapsed - base_t).as_secs_f64().max(1e-9);
        let rate = (self.records_out - base_out) as f64 / secs;
        format!(
            "in {} out {} ({}/s) refused {} dead-lettered {}",
            compact(self.records_in as f64),
            compact(self.records_out as f64),
            compact(rate),
            self.rejected,
            self.dead_lettered
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_reads_well() {
        let s = Summary {
            records_in: 2_500_000,
            records_out: 2_400_000,
            rejected: 3,
            dead_lettered: 3,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(s.line(None), "in 2.50M out 2.40M (1.20M/s) refused 3 dead-lettered 3");
        let earlier = Summary { records_out: 400_000, elapsed: Duration::from_secs(1), ..s };
        assert_eq!(s.line(Some(&earlier)), "in 2.50M out 2.40M (2.00M/s) refused 3 dead-lettered 3");
        assert_eq!(compact(15_300.0), "15.3k");
    }
}
