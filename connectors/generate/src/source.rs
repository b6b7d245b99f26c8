use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use flowgate_sdk::{Batch, Bytes, ConnectorError, Metadata, OpenContext, Read, Record, Source, Watermark, async_trait};

use crate::GenerateConfig;

pub struct GenerateSource {
    config: GenerateConfig,
    rng: fastrand::Rng,
    max: usize,
    linger: Duration,
    next: u64,
    started: Instant,
    /// Size of the last rendering, to allocate each value once at the right size.
    size_hint: usize,
}

impl GenerateSource {
    pub fn new(config: GenerateConfig, ctx: &OpenContext) -> Self {
        let rng = config.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        GenerateSource {
            config,
            rng,
            max: ctx.batch_size,
            linger: ctx.linger,
            next: 0,
            started: Instant::now(),
            size_hint: 64,
        }
    }

    /// How many records may be produced now without exceeding the rate.
    async fn allowance(&mut self) -> u64 {
        let Some(rate) = self.config.rate else { return self.max as u64 };
        loop {
            let due = (self.started.elapsed().as_secs_f64() * rate) as u64;
            let ready = due.saturating_sub(self.next);
            if ready >= self.max as u64 {
                return self.max as u64;
            }
            // Wait for a full batch, but no longer than the linger time.
            let until_full = Duration::from_secs_f64((self.max as u64 - ready) as f64 / rate);
            if ready > 0 && until_full > self.linger {
                return ready;
            }
            tokio::time::sleep(until_full.min(self.linger).max(Duration::from_millis(1))).await;
        }
    }
}

#[async_trait]
impl Source for GenerateSource {
    async fn read(&mut self, batch: &mut Batch) -> Result<Read, ConnectorError> {
        let remaining = self.config.count.map_or(u64::MAX, |c| c - self.next.min(c));
        if remaining == 0 {
            return Ok(Read::End);
        }
        let n = self.allowance().await.min(remaining);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for _ in 0..n {
            let seq = self.next;
            self.next += 1;
            let mut value = Vec::with_capacity(self.size_hint);
            self.config.template.render(&mut value, seq, now_ms, &mut self.rng);
            self.size_hint = value.len() + 8;
            let key = self.config.key.as_ref().map(|k| {
                let mut key = Vec::with_capacity(16);
                k.render(&mut key, seq, now_ms, &mut self.rng);
                Bytes::from(key)
            });
            batch.records.push(Record {
                key,
                value: Bytes::from(value),
                headers: Vec::new(),
                timestamp: Some(now_ms),
                meta: Metadata::default().with("seq", i64::try_from(seq).unwrap_or(i64::MAX)),
                schema: None,
            });
        }
        Ok(Read::Data)
    }

    /// Synthetic data has no position worth keeping: a restart generates anew.
    async fn commit(&mut self, _: Watermark) -> Result<(), ConnectorError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flowgate_sdk::{Role, StateStore};

    use super::*;

    fn source(yaml_count: Option<u64>, rate: Option<f64>, batch_size: usize) -> GenerateSource {
        let config = GenerateConfig {
            template: r#"{"id":${seq}}"#.parse().unwrap(),
            key: Some("k${seq}".parse().unwrap()),
            count: yaml_count,
            rate,
            seed: Some(1),
        };
        let ctx = OpenContext::new("t", "generate", Role::Source, StateStore::new("/nonexistent"))
            .with_batch(batch_size, Duration::from_millis(50));
        GenerateSource::new(config, &ctx)
    }

    #[tokio::test]
    async fn stops_after_count() {
        let mut src = source(Some(25), None, 10);
        let mut sizes = Vec::new();
        loop {
            let mut b = Batch::with_capacity(0, 10);
            if src.read(&mut b).await.unwrap() == Read::End {
                break;
            }
            sizes.push(b.records.len());
            let last = b.records.last().unwrap();
            assert_eq!(last.key.as_deref(), Some(format!("k{}", src.next - 1).as_bytes()));
        }
        assert_eq!(sizes, [10, 10, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_to_the_rate() {
        let mut src = source(None, Some(100.0), 1000);
        let start = tokio::time::Instant::now();
        let mut total = 0;
        while total < 300 {
            let mut b = Batch::with_capacity(0, 1000);
            src.read(&mut b).await.unwrap();
            // Linger 50ms at 100/s: batches of about 5.
            assert!(b.records.len() <= 10, "{}", b.records.len());
            total += b.records.len();
        }
        let secs = start.elapsed().as_secs_f64();
        assert!((2.9..3.3).contains(&secs), "300 records at 100/s took {secs}s");
    }
}
