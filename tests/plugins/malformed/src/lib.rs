//! Answers every batch with an output that breaks wit/BATCH-FORMAT.md in one
//! way, per `mode`: `truncated` (an EMIT whose record ends early), `bad-tag`
//! (an outcome tag that does not exist), `wrong-count` (one outcome too few)
//! or `leftover` (bytes after the last outcome). Writes its output itself:
//! the guest helper would write it right. For `flowgate plugin check`, which
//! must find each without a pipeline.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "wit", world: "transform" });

static MODE: Mutex<String> = Mutex::new(String::new());

struct Malformed;

impl exports::flowgate::transform::transformer::Guest for Malformed {
    fn init(config: String) -> Result<(), String> {
        let mode = ["truncated", "bad-tag", "wrong-count", "leftover"]
            .into_iter()
            .find(|m| config.contains(&format!("\"{m}\"")))
            .ok_or("config needs \"mode\": truncated | bad-tag | wrong-count | leftover")?;
        *MODE.lock().unwrap() = mode.to_string();
        Ok(())
    }

    fn process(batch: Vec<u8>) -> Vec<u8> {
        let count = u32::from_le_bytes(batch[..4].try_into().unwrap());
        let mode = MODE.lock().unwrap();
        let answered = if *mode == "wrong-count" { count - 1 } else { count };
        let mut out = count.to_le_bytes().to_vec();
        for index in 0..answered {
            out.extend_from_slice(&index.to_le_bytes());
            match (mode.as_str(), index) {
                // EMIT one record: flags, then a value of 100 bytes that are not there.
                ("truncated", 0) => out.extend_from_slice(&[1, 1, 0, 0, 0, 0, 100, 0, 0, 0, b'x']),
                ("bad-tag", 0) => out.push(7),
                _ => out.push(0), // KEEP
            }
        }
        if *mode == "leftover" {
            out.extend_from_slice(b"junk");
        }
        out
    }
}
export!(Malformed);
