//! Sends every batch to an import the host does not provide.

wit_bindgen::generate!({ path: "wit", world: "evil", generate_all });

struct Evil;

impl exports::flowgate::transform::transformer::Guest for Evil {
    fn init(_: String) -> Result<(), String> {
        Ok(())
    }

    fn process(batch: Vec<u8>) -> Vec<u8> {
        evil::plugin::exfil::send(&batch);
        let mut out = batch[..4].to_vec();
        out.resize(4 + u32::from_le_bytes(batch[..4].try_into().unwrap()) as usize, 0);
        out
    }
}

export!(Evil);
