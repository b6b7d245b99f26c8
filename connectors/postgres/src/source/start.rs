//! How the source starts, decided from what is known before anything is done:
//! whether the slot exists, what the pipeline recorded of it (`crate::state`),
//! and whether the configuration asks for a snapshot. Pure, so every case is
//! tested without a server; `PostgresCdcSource::open` carries the plan out,
//! and `validate --check` reports its refusals.

use crate::state::SlotState;

/// The key under which release 0.1 kept the record of `slot` in the state
/// directory; read once, when the database has no record yet.
pub(crate) fn state_key(slot: &str) -> String {
    format!("postgres_cdc.{slot}")
}

/// How to start from the slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StartPlan {
    /// The slot exists and the snapshot through it was written: stream from it.
    Resume,
    /// The initial snapshot did not finish last time: drop the slot and take it again.
    RetakeSnapshot,
    /// The slot exists, this pipeline has no record of it, and no snapshot is
    /// wanted: stream from where it stands (recorded as having its snapshot done).
    StreamExisting,
    /// No slot: create it (with the snapshot, if one is wanted).
    Create,
    /// Starting would lose or misalign changes: stop with this message.
    Refuse(String),
}

/// The plan for starting with the slot `slot` (which exists or not) and the
/// `record` kept for it; `forget` is the statement that deletes the record,
/// named in the message that asks for it.
pub(crate) fn plan_start(
    slot_exists: bool,
    record: Option<&SlotState>,
    wants_snapshot: bool,
    slot: &str,
    forget: &str,
) -> StartPlan {
    match (slot_exists, record) {
        (true, Some(r)) if r.snapshot_done => StartPlan::Resume,
        (true, Some(_)) => StartPlan::RetakeSnapshot,
        (true, None) if !wants_snapshot => StartPlan::StreamExisting,
        (true, None) => StartPlan::Refuse(format!(
            "replication slot `{slot}` already exists, and this pipeline has no record of a snapshot through \
             it, so one taken now would not line up with the slot's position. Drop it \
             (`SELECT pg_drop_replication_slot('{slot}')`) to start with a snapshot, or set `snapshot: never` \
             to stream from where it stands"
        )),
        (false, Some(r)) if r.snapshot_done => StartPlan::Refuse(format!(
            "replication slot `{slot}` is gone (dropped, or lost in a failover), so changes made since it \
             was last read cannot be streamed. To start over with a new snapshot, forget its record \
             (`{forget}`) and run again"
        )),
        (false, _) => StartPlan::Create,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: SlotState = SlotState { snapshot_done: true, publication_created: false };
    const UNFINISHED: SlotState = SlotState { snapshot_done: false, publication_created: false };

    fn plan(slot_exists: bool, record: Option<&SlotState>, wants_snapshot: bool) -> StartPlan {
        let forget = crate::state::forget("flowgate", "flowgate_orders");
        plan_start(slot_exists, record, wants_snapshot, "flowgate_orders", &forget)
    }

    #[test]
    fn an_existing_slot_with_its_snapshot_written_is_resumed() {
        for wants_snapshot in [true, false] {
            assert_eq!(plan(true, Some(&DONE), wants_snapshot), StartPlan::Resume);
        }
    }

    #[test]
    fn an_unfinished_snapshot_is_taken_again() {
        for wants_snapshot in [true, false] {
            assert_eq!(plan(true, Some(&UNFINISHED), wants_snapshot), StartPlan::RetakeSnapshot);
        }
    }

    #[test]
    fn an_unknown_slot_is_streamed_from_when_no_snapshot_is_wanted() {
        assert_eq!(plan(true, None, false), StartPlan::StreamExisting);
    }

    #[test]
    fn an_unknown_slot_is_refused_when_a_snapshot_is_wanted() {
        let StartPlan::Refuse(message) = plan(true, None, true) else { panic!("not refused") };
        assert!(message.starts_with("replication slot `flowgate_orders` already exists"), "{message}");
        assert!(message.contains("`SELECT pg_drop_replication_slot('flowgate_orders')`"), "{message}");
        assert!(message.contains("`snapshot: never`"), "{message}");
    }

    #[test]
    fn a_used_slot_that_is_gone_is_refused_naming_its_record() {
        for wants_snapshot in [true, false] {
            let StartPlan::Refuse(message) = plan(false, Some(&DONE), wants_snapshot) else { panic!("not refused") };
            assert!(message.starts_with("replication slot `flowgate_orders` is gone"), "{message}");
            assert!(
                message.contains(r#"(`DELETE FROM "flowgate".cdc_slots WHERE slot = 'flowgate_orders'`)"#),
                "{message}"
            );
        }
    }

    #[test]
    fn a_missing_slot_is_created_unless_it_was_used() {
        for wants_snapshot in [true, false] {
            assert_eq!(plan(false, None, wants_snapshot), StartPlan::Create);
            // The snapshot never finished, so no change was streamed from it.
            assert_eq!(plan(false, Some(&UNFINISHED), wants_snapshot), StartPlan::Create);
        }
    }

    #[test]
    fn the_record_of_release_0_1_is_read_from_its_state_file_shape() {
        assert_eq!(state_key("flowgate_orders"), "postgres_cdc.flowgate_orders");
        let r: SlotState = serde_json::from_str(r#"{"snapshot_done":false}"#).unwrap();
        assert_eq!(r, UNFINISHED);
        let r: SlotState = serde_json::from_str(r#"{"snapshot_done":true}"#).unwrap();
        assert_eq!(r, DONE);
    }
}
