//! Built against an older contract; Flowgate must refuse it at validate time.

wit_bindgen::generate!({ path: "wit", world: "transform" });

struct Old;

impl exports::flowgate::transform::transformer::Guest for Old {
    fn init(_: String) -> Result<(), String> {
        Ok(())
    }

    fn process(
        batch: Vec<exports::flowgate::transform::transformer::Rec>,
    ) -> Vec<exports::flowgate::transform::transformer::Rec> {
        batch
    }
}

export!(Old);
