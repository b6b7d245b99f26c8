//! Change events encoded straight into `COPY` text by the prepare step, as
//! [`super::direct`] does for inserts and upserts.
//!
//! Parsing each event whole into maps of owned values, finding each key's
//! last change through them and walking them again to write the rows was
//! most of the sink's CPU for change events. For the common batch (events
//! keyed by a configured `key`, of named `columns:` or, without them, rows
//! holding exactly the table's columns; none moving a row to a new key, none
//! with a value left out), the prepare step reads from each event only `op`
//! and the columns of `before` and `after`, keeps the last
//! change per key as [`super::apply`] does, and writes three texts: the keys
//! to delete, the rows created, and the rows updated. The sink applies them
//! as the general path applies the same operations: deletes, then the creates
//! (which try going straight in) and the updates, in the order they first
//! came. Where the general path would write a group of so few rows by
//! statements, the staging table does the same: only the straight-in try is
//! left out.
//!
//! Anything the general path would do otherwise sends the batch down it: an
//! event that is not JSON or not an object, an unknown op, a truncate, a side
//! that is not an object where one is needed, a key column missing or null,
//! a column missing from `after` (or, without `columns:`, a field in it that
//! is not a column), a TOAST value left out, a key moved.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::Range;

use flowgate_sdk::Record;
use serde::de::{DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::copy::{COPY_MIN_ROWS, Rows, StraightIn};
use super::direct::{Fields, Others, Scalar, Shape, write_cell};
use super::{SqlSink, TableInfo};
use crate::change::{FieldName, UNAVAILABLE};

/// A batch's change events as `COPY` text, the last change per key.
pub(super) struct Changes {
    /// The keys of the rows to delete, in the key's column order.
    deletes: Vec<u8>,
    /// Rows created (`c`, or `r` from a snapshot): their keys are most
    /// likely new.
    creates: Vec<u8>,
    /// Rows updated, or created again after an earlier change to their key
    /// in the batch.
    updates: Vec<u8>,
    /// Created rows came before updated ones (the order the general path
    /// writes its groups in).
    creates_first: bool,
    /// How many rows `creates` holds: as few as the general path writes by
    /// statements never try going straight in.
    created: usize,
}

impl Changes {
    pub(super) fn len(&self) -> usize {
        self.deletes.len() + self.creates.len() + self.updates.len()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Delete,
    Create,
    Update,
}

/// `records` as [`Changes`] for `shape`, or `None` when one of them needs
/// the general path.
pub(super) fn encode(records: &[Record], shape: &Shape) -> Option<Changes> {
    let mut text = Vec::with_capacity(records.iter().map(|r| r.value.len()).sum());
    // Each key's last change, where the key first came, as `apply_segment` keeps them.
    let mut last: Vec<(Kind, Range<usize>)> = Vec::with_capacity(records.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(records.len());
    for r in records {
        if r.value.is_empty() {
            continue; // A tombstone: only for log compaction.
        }
        // Checked whole first, as the general path does.
        let event = std::str::from_utf8(&r.value).ok()?;
        let mut de = serde_json::Deserializer::from_str(event);
        let Event { op, before, after } = de.deserialize_map(EventVisitor(shape)).ok()?;
        de.end().ok()?;
        let Some(Scalar::Str(op)) = op else { return None };
        let (kind, values) = match &*op {
            "c" | "r" => (Kind::Create, after?),
            "u" => {
                let after = after?;
                let present = |v: &Option<Scalar<'_>>| v.as_ref().is_some_and(|v| *v != Scalar::Null);
                if let Some(before) = &before
                    && shape.key_at.iter().all(|&k| present(&before[k]))
                    && shape.key_at.iter().any(|&k| before[k] != after[k])
                {
                    return None; // The row moves to a new key.
                }
                (Kind::Update, after)
            }
            "d" => (Kind::Delete, before?),
            _ => return None,
        };
        let key: Vec<&Scalar<'_>> =
            shape.key_at.iter().map(|&k| values[k].as_ref().filter(|v| **v != Scalar::Null)).collect::<Option<_>>()?;
        // The key's values as `change::key_text` writes them.
        let id = serde_json::to_string(&key).ok()?;
        let start = text.len();
        if kind == Kind::Delete {
            for (n, (value, &k)) in key.iter().zip(&shape.key_at).enumerate() {
                if n > 0 {
                    text.push(b'\t');
                }
                write_cell(&mut text, (*value).clone(), &shape.types[k]);
            }
        } else {
            for (n, (value, ty)) in values.into_iter().zip(&shape.types).enumerate() {
                if n > 0 {
                    text.push(b'\t');
                }
                match value? {
                    Scalar::Str(s) if s == UNAVAILABLE => return None,
                    v => write_cell(&mut text, v, ty),
                }
            }
        }
        text.push(b'\n');
        let row = start..text.len();
        match index.entry(id) {
            Entry::Occupied(at) => {
                let kind = if kind == Kind::Create { Kind::Update } else { kind };
                last[*at.get()] = (kind, row);
            }
            Entry::Vacant(at) => {
                at.insert(last.len());
                last.push((kind, row));
            }
        }
    }
    let mut changes =
        Changes { deletes: Vec::new(), creates: Vec::new(), updates: Vec::new(), creates_first: true, created: 0 };
    let mut first = None;
    for (kind, row) in last {
        let into = match kind {
            Kind::Delete => &mut changes.deletes,
            Kind::Create => &mut changes.creates,
            Kind::Update => &mut changes.updates,
        };
        into.extend_from_slice(&text[row]);
        if kind != Kind::Delete {
            first.get_or_insert(kind);
        }
        if kind == Kind::Create {
            changes.created += 1;
        }
    }
    changes.creates_first = first != Some(Kind::Update);
    Some(changes)
}

impl SqlSink {
    /// Applies a batch's [`Changes`] through the table's staging table
    /// `stage`, as the general path applies the same operations.
    pub(super) async fn apply_changes(
        &mut self,
        info: &TableInfo,
        stage: &str,
        shape: &Shape,
        changes: &Changes,
    ) -> Result<(), sqlx::Error> {
        if !changes.deletes.is_empty() {
            self.delete_copied(info, stage, &shape.key, Rows::Text(&changes.deletes)).await?;
        }
        // The general path writes groups smaller than `COPY` takes by
        // statements, to the same rows but without the try.
        let mut upserts = [(&changes.creates, changes.created >= COPY_MIN_ROWS), (&changes.updates, false)];
        if !changes.creates_first {
            upserts.reverse();
        }
        for (rows, new) in upserts {
            if !rows.is_empty() {
                self.upsert_copied(info, stage, &shape.columns, &shape.key, Rows::Text(rows), StraightIn::when(new))
                    .await?;
            }
        }
        Ok(())
    }
}

/// What the general path reads of a change event (`change::ops`): `op`, and
/// the columns of `before` and `after`, `None` where that side is
/// missing or not an object. The last of a repeated field counts.
struct Event<'de> {
    op: Option<Scalar<'de>>,
    before: Side<'de>,
    after: Side<'de>,
}

type Side<'de> = Option<Vec<Option<Scalar<'de>>>>;

struct EventVisitor<'a>(&'a Shape);

impl<'de> Visitor<'de> for EventVisitor<'_> {
    type Value = Event<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a change event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event<'de>, A::Error> {
        let mut event = Event { op: None, before: None, after: None };
        while let Some(name) = map.next_key_seed(FieldName)? {
            match &*name {
                "op" => event.op = Some(map.next_value()?),
                // Only its key is used: other fields are never refused.
                "before" => event.before = map.next_value_seed(SideSeed(&self.0.columns, Others::Parse))?,
                "after" => {
                    let others = if self.0.whole { Others::Refuse } else { Others::Parse };
                    event.after = map.next_value_seed(SideSeed(&self.0.columns, others))?;
                }
                // Parsed whole, as the general path parses the whole event.
                _ => {
                    map.next_value::<Value>()?;
                }
            }
        }
        Ok(event)
    }
}

/// `before` or `after`: the columns of an object, its other fields as
/// [`Others`] says; anything but an object is parsed and read as `None`.
struct SideSeed<'a>(&'a [String], Others);

impl<'de> DeserializeSeed<'de> for SideSeed<'_> {
    type Value = Side<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Side<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SideSeed<'_> {
    type Value = Side<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Side<'de>, A::Error> {
        Fields { columns: self.0, others: self.1 }.visit_map(map).map(Some)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Side<'de>, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Side<'de>, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Side<'de>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Side<'de>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Side<'de>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Side<'de>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Side<'de>, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{Columns, Mode, SqlSinkConfig};
    use crate::dialect::Dialect;

    fn shape() -> Shape {
        shape_of(Some(Columns::Names(vec!["doc".into(), "id".into(), "n".into()])))
    }

    fn shape_of(columns: Option<Columns>) -> Shape {
        let info = TableInfo {
            quoted: "\"t\"".into(),
            columns: [("id", "bigint"), ("n", "integer"), ("doc", "text"), ("other", "text")]
                .iter()
                .map(|(c, t)| (c.to_string(), t.to_string()))
                .collect(),
            linked: false,
            copy_in: true,
            lockable: true,
        };
        let config = SqlSinkConfig {
            url: "postgres://localhost/x".into(),
            table: "t".parse().unwrap(),
            mode: Mode::Cdc,
            key: vec!["id".into()],
            columns,
            create_table: false,
            delivery: Default::default(),
            synchronous: Default::default(),
            unknown_fields: Default::default(),
            tables_allowed: None,
        };
        Shape::of(&config, Dialect::Postgres, &info).expect("a shape for change events")
    }

    fn event(op: &str, before: serde_json::Value, after: serde_json::Value) -> String {
        json!({"op": op, "before": before, "after": after, "source": {"lsn": 1, "table": "t"}}).to_string()
    }

    fn row(id: i64, n: i64) -> serde_json::Value {
        json!({"id": id, "n": n, "doc": format!("d\t{id}"), "skipped": [1, {"x": null}]})
    }

    fn encoded(events: &[String]) -> Option<Changes> {
        let records: Vec<Record> = events.iter().map(|e| Record::from_value(e.clone())).collect();
        encode(&records, &shape())
    }

    fn text(rows: &[u8]) -> &str {
        std::str::from_utf8(rows).unwrap()
    }

    #[test]
    fn the_last_change_per_key_counts_as_the_general_path_keeps_it() {
        let events = [
            event("c", json!(null), row(1, 1)),
            event("u", json!({"id": 2}), row(2, 1)),
            event("c", json!(null), row(3, 1)),
            // Updated after its create: the update's row, as an update.
            event("u", json!({"id": 1, "n": 1}), row(1, 2)),
            // Deleted, then created again: an update, for the row may be there.
            event("d", row(4, 0), json!(null)),
            event("c", json!(null), row(4, 5)),
            // Created, then deleted: a delete.
            event("r", json!(null), row(5, 1)),
            event("d", json!({"id": 5}), json!(null)),
            String::new(),
        ];
        let c = encoded(&events).expect("encoded");
        // Columns in `columns:` order: doc, id, n.
        assert_eq!(text(&c.creates), "d\\t3\t3\t1\n");
        // Too few to try going straight in, as the general path would not.
        assert_eq!(c.created, 1);
        assert_eq!(text(&c.updates), "d\\t1\t1\t2\nd\\t2\t2\t1\nd\\t4\t4\t5\n");
        assert_eq!(text(&c.deletes), "5\n");
        assert!(!c.creates_first, "key 1, an update now, came first");
        let c = encoded(&events[1..3]).expect("encoded");
        assert!(!c.creates_first);
        let c = encoded(&events[2..]).expect("encoded");
        assert!(c.creates_first);
    }

    #[test]
    fn events_the_general_path_writes_otherwise_send_the_batch_its_way() {
        let good = event("u", json!(null), row(9, 1));
        for bad in [
            "not json".to_string(),
            "[1]".into(),
            r#"{"op": "c", "after": {"id": 1, "n": 1, "doc": "x"}, "x": "\ud800"}"#.into(),
            json!({"after": row(1, 1)}).to_string(),
            json!({"op": 1, "after": row(1, 1)}).to_string(),
            event("t", json!(null), json!(null)),
            event("x", json!(null), row(1, 1)),
            event("c", json!(null), json!(null)),
            event("c", json!(null), json!({"id": 1, "n": 1})),
            event("c", json!(null), json!({"id": null, "n": 1, "doc": "x"})),
            event("u", json!({"id": 1}), json!({"id": 1, "n": 1, "doc": UNAVAILABLE})),
            event("u", json!({"id": 1}), row(2, 1)),
            event("u", json!({"id": 1}), json!({"id": 1.0, "n": 1, "doc": "x"})),
            event("d", json!(null), json!(null)),
            event("d", json!({"n": 1}), json!(null)),
        ] {
            assert!(encoded(&[good.clone(), bad.clone()]).is_none(), "{bad}");
        }
        // Updates whose `before` has no key (Debezium without the old row)
        // keep their key; a repeated field keeps its last value.
        let fine = [
            good,
            event("u", json!({"id": null}), row(8, 1)),
            r#"{"op": "x", "after": {"id": 7, "n": 1, "doc": "a", "n": 2}, "op": "c", "before": 3}"#.into(),
        ];
        let c = encoded(&fine).expect("encoded");
        assert_eq!(text(&c.creates), "a\t7\t2\n");
        assert_eq!(text(&c.updates), "d\\t9\t9\t1\nd\\t8\t8\t1\n");
    }

    #[test]
    fn without_columns_named_an_events_row_holds_exactly_the_tables_columns() {
        let shape = shape_of(None);
        let whole = |after: serde_json::Value| {
            let records: Vec<Record> =
                [event("d", json!({"id": 0, "gone": true}), json!(null)), event("c", json!(null), after)]
                    .iter()
                    .map(|e| Record::from_value(e.clone()))
                    .collect();
            encode(&records, &shape)
        };
        let c = whole(json!({"id": 1, "n": 1, "doc": "a", "other": null})).expect("encoded");
        // The table's columns in its order: id, n, doc, other.
        assert_eq!(text(&c.creates), "1\t1\ta\t\\N\n");
        assert_eq!(text(&c.deletes), "0\n");
        assert!(whole(json!({"id": 1, "n": 1, "doc": "a", "other": null, "more": 1})).is_none());
        assert!(whole(json!({"id": 1, "n": 1, "doc": "a"})).is_none());
    }
}
