//! Counters of one pipeline: kept as atomics for the progress line and the
//! summary, mirrored into Prometheus metrics when an exporter is installed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};

pub struct Stats {
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
}

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
        Stats {
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
        }
    }

    pub fn read(&self, n: u64) {
        self.records_in.fetch_add(n, Relaxed);
        self.m_in.increment(n);
    }

    pub fn written(&self, n: u64, took: Duration) {
        self.records_out.fetch_add(n, Relaxed);
        self.m_out.increment(n);
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
