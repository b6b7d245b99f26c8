//! Misbehaves on records whose value contains the configured `poison` text:
//! loops forever, sleeps an hour, grows memory without end, panics, or
//! answers with a huge value, per `mode`; `jitter` also sleeps a little on
//! every record (0 to 2 ms), so that batches take different times. Passes every other record unchanged.

use flowgate_guest::{Outcome, Record, Transform, host};

struct Hostile {
    mode: String,
    poison: String,
    /// For `big`: the value's size in MiB.
    size: String,
}

impl Transform for Hostile {
    fn init(config: &str) -> Result<Self, String> {
        // A tiny hand parser: this plugin avoids dependencies to stay minimal.
        let field = |name: &str| {
            let start = config.find(&format!("\"{name}\":\""))? + name.len() + 4;
            Some(config[start..start + config[start..].find('"')?].to_string())
        };
        let mode = field("mode")
            .ok_or("config needs \"mode\": loop | sleep | jitter | grow | panic | big | print | refuse")?;
        if mode == "refuse" {
            return Err("this plugin refuses to start".into());
        }
        let poison = field("poison").ok_or("config needs \"poison\"")?;
        // Each instance says so once: a run must start one, not one for its
        // check and another for the pipeline.
        println!("hostile instance started");
        Ok(Hostile { mode, poison, size: field("size").unwrap_or_default() })
    }

    fn process(&mut self, record: &Record<'_>) -> Outcome {
        let poisoned = record.value.windows(self.poison.len()).any(|w| w == self.poison.as_bytes());
        if self.mode == "jitter" {
            // 0 to 2 ms per record, told from its value: batches take
            // different times, so workers finish out of order.
            let h = record.value.iter().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(*b)));
            std::thread::sleep(std::time::Duration::from_micros(u64::from(h % 2000)));
            if poisoned {
                panic!("poisoned record");
            }
        }
        if !poisoned {
            return Outcome::Keep;
        }
        match self.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            // A host call that blocks: no wasm runs meanwhile to meet the deadline.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Outcome::Keep
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("poisoned record"),
            // A value of `size` MiB in its place: more than wasmtime copies
            // out of one call by default.
            "big" => {
                let mib: usize = self.size.parse().unwrap_or(1);
                Outcome::Value(vec![b'x'; mib << 20])
            }
            "print" => {
                println!("stdout line from the plugin");
                eprintln!("stderr line from the plugin");
                host::warn("a host log line");
                Outcome::Keep
            }
            _ => Outcome::fail("unknown mode"),
        }
    }
}

flowgate_guest::export!(Hostile);
