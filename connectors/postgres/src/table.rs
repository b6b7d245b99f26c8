//! A captured table's relation description, from a Relation message or the
//! catalog: what change events are written from (`event`) and what their Avro
//! schema is made from (`avro`).

use std::sync::Arc;

use flowgate_sdk::ValueSchema;

use crate::decode::{Kind, kind_of};

/// A captured table's shape, from a Relation message or the catalog.
#[derive(Debug)]
pub struct Table {
    pub schema: Arc<str>,
    pub name: Arc<str>,
    pub columns: Vec<Column>,
    /// `REPLICA IDENTITY FULL`: an update's old row is whole, so it can fill in
    /// unchanged TOAST values. (Otherwise its non-key columns are nulls.)
    pub full_identity: bool,
    /// The Avro schema of this table's change events.
    pub avro: Option<Arc<ValueSchema>>,
}

#[derive(Debug)]
pub struct Column {
    pub name: Arc<str>,
    pub kind: Kind,
    pub oid: u32,
    /// The type modifier (`numeric(10,2)`, `varchar(20)`), -1 when none.
    pub typmod: i32,
    pub key: bool,
    /// `"name":`, the column's name as a JSON object key, written once.
    pub json_key: Box<[u8]>,
}

impl Table {
    /// The table with its columns, given as `(name, type oid, type modifier,
    /// is key)`; without an Avro schema, which `avro::with_schema` adds.
    pub fn new(
        schema: Arc<str>,
        name: Arc<str>,
        full_identity: bool,
        columns: impl IntoIterator<Item = (Arc<str>, u32, i32, bool)>,
    ) -> Self {
        let columns = columns
            .into_iter()
            .map(|(name, oid, typmod, key)| {
                let mut json_key = serde_json::to_vec(&*name).expect("a string serializes");
                json_key.push(b':');
                Column { json_key: json_key.into(), name, kind: kind_of(oid), oid, typmod, key }
            })
            .collect();
        Table { schema, name, columns, full_identity, avro: None }
    }

    pub fn has_key(&self) -> bool {
        self.columns.iter().any(|c| c.key)
    }
}
