mod mask;

use flowgate_guest::{Outcome, Record, Transform, host};

struct PiiMask(mask::Config);

impl Transform for PiiMask {
    fn init(config: &str) -> Result<Self, String> {
        let config: mask::Config = flowgate_guest::config(config)?;
        host::info(&format!("pii-mask ready: masking {:?} with {:?}", config.fields, config.mask));
        Ok(PiiMask(config))
    }

    fn on_batch(&mut self, records: usize) {
        host::counter("records", records as u64);
    }

    fn process(&mut self, record: &Record<'_>) -> Outcome {
        match mask::mask(&self.0, record.value) {
            Ok(value) => Outcome::Value(value),
            Err(reason) => Outcome::Fail(reason),
        }
    }
}

flowgate_guest::export!(PiiMask);
