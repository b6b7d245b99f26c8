//! The change feed's position as a [`Position`]: one part, `postgres` =
//! `<end LSN>` or `<end LSN>/<xid>:<count>` when a batch stops inside a
//! transaction (its id, and how many of its changes were handed out). A feed
//! resumes after the end LSN, skipping those changes when the first
//! transaction it meets is that one.
//!
//! Positions stored by 0.1 (three BIGINT parts: `postgres`,
//! `postgres.within_xid`, `postgres.within_count`, -1 for none) read the same.

use flowgate_sdk::Position;

const KEY: &str = "postgres";

pub fn encode(end: u64, within: Option<(u32, u64)>) -> Position {
    let value = match within {
        Some((xid, count)) => format!("{end}/{xid}:{count}"),
        None => end.to_string(),
    };
    Position::default().with(KEY, value)
}

/// A number as stored: 0.1 kept LSNs in a signed BIGINT, bit for bit.
fn number(text: &str) -> Option<u64> {
    text.parse::<u64>().ok().or_else(|| text.parse::<i64>().ok().map(|n| n as u64))
}

pub fn decode(position: &Position) -> Option<(u64, Option<(u32, u64)>)> {
    let value = position.get(KEY)?;
    if let Some((end, within)) = value.split_once('/') {
        let (xid, count) = within.split_once(':')?;
        return Some((number(end)?, Some((xid.parse().ok()?, count.parse().ok()?))));
    }
    let legacy = |key: &str| position.get(key).and_then(|v| v.parse::<i64>().ok()).filter(|n| *n >= 0);
    let xid = legacy("postgres.within_xid").and_then(|n| u32::try_from(n).ok());
    let count = legacy("postgres.within_count").and_then(|n| u64::try_from(n).ok());
    Some((number(value)?, xid.zip(count)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for within in [None, Some((771, 250))] {
            assert_eq!(decode(&encode(23_803_720, within)), Some((23_803_720, within)));
        }
        assert_eq!(decode(&encode(u64::MAX, None)), Some((u64::MAX, None)));
    }

    #[test]
    fn reads_what_0_1_stored() {
        let at_boundary = Position::default()
            .with("postgres", "23803720")
            .with("postgres.within_xid", "-1")
            .with("postgres.within_count", "-1");
        assert_eq!(decode(&at_boundary), Some((23_803_720, None)));
        let inside = Position::default()
            .with("postgres", "-2")
            .with("postgres.within_xid", "771")
            .with("postgres.within_count", "250");
        assert_eq!(decode(&inside), Some((u64::MAX - 1, Some((771, 250)))));
        assert_eq!(decode(&Position::default().with("kafka:t:0", "5")), None);
    }
}
