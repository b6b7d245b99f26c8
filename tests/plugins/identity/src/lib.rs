//! Keeps every record: measures the cost of the Wasm step itself.

use flowgate_guest::{Outcome, Record, Transform};

struct Identity;

impl Transform for Identity {
    fn init(_: &str) -> Result<Self, String> {
        Ok(Identity)
    }

    fn process(&mut self, _: &Record<'_>) -> Outcome {
        Outcome::Keep
    }
}

flowgate_guest::export!(Identity);
