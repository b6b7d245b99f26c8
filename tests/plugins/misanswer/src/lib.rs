//! Answers a record whose value contains the configured `poison` text with the
//! index of the record after it: that neighbour is answered twice and the
//! poisoned record never, in a batch otherwise well formed (the right count,
//! every outcome a KEEP). Writes its output itself: the guest helper numbers
//! outcomes right.

use std::sync::Mutex;

wit_bindgen::generate!({ path: "wit", world: "transform" });

static POISON: Mutex<String> = Mutex::new(String::new());

struct Misanswer;

impl exports::flowgate::transform::transformer::Guest for Misanswer {
    fn init(config: String) -> Result<(), String> {
        // A crude parser, like the hostile plugin's: no dependencies.
        let poison = config
            .split_once("\"poison\"")
            .and_then(|(_, rest)| rest.split_once(':'))
            .and_then(|(_, rest)| rest.trim_start().strip_prefix('"'))
            .and_then(|rest| rest.split_once('"'))
            .map(|(poison, _)| poison)
            .filter(|poison| !poison.is_empty())
            .ok_or("config needs a non-empty \"poison\"")?;
        *POISON.lock().unwrap() = poison.to_string();
        Ok(())
    }

    fn process(batch: Vec<u8>) -> Vec<u8> {
        let poison = POISON.lock().unwrap();
        let mut input = Reader(&batch);
        let count = input.u32();
        let mut out = Vec::with_capacity(4 + 5 * count);
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for position in 0..count as u32 {
            let value = input.value();
            let poisoned = value.windows(poison.len()).any(|w| w == poison.as_bytes());
            let index = if poisoned { position + 1 } else { position };
            out.extend_from_slice(&index.to_le_bytes());
            out.push(0); // KEEP
        }
        out
    }
}

/// Reads the input format of wit/BATCH-FORMAT.md; running past the end traps.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn u8(&mut self) -> usize {
        self.take(1)[0] as usize
    }

    fn u16(&mut self) -> usize {
        u16::from_le_bytes(self.take(2).try_into().unwrap()) as usize
    }

    fn u32(&mut self) -> usize {
        u32::from_le_bytes(self.take(4).try_into().unwrap()) as usize
    }

    /// The next record's value; its key, timestamp, headers and meta are skipped.
    fn value(&mut self) -> &'a [u8] {
        let flags = self.u8();
        if flags & 1 != 0 {
            let n = self.u32();
            self.take(n);
        }
        let n = self.u32();
        let value = self.take(n);
        if flags & 2 != 0 {
            self.take(8);
        }
        for _ in 0..self.u16() {
            let n = self.u16();
            self.take(n);
            let n = self.u32();
            self.take(n);
        }
        for _ in 0..self.u8() {
            let n = self.u8();
            self.take(n);
            let n = match self.u8() {
                0 => 8,
                1 => self.u32(),
                kind => panic!("unknown metadata type {kind}"),
            };
            self.take(n);
        }
        value
    }
}

export!(Misanswer);
