//! The source position of effectively-once sinks, kept with the rows in table
//! `flowgate_source_positions`: stored in the batch's transaction, read back
//! when the pipeline starts.

use flowgate_sdk::{ConnectorError, Position};

use super::cell::Cell;

use super::SqlSink;
use crate::config::Delivery;
use crate::error::SqlError;

impl SqlSink {
    /// Stores each part of the source's position, in the batch's transaction.
    pub(super) async fn save_position(&mut self, position: &Position) -> Result<(), SqlError> {
        let sql = self.dialect.save_position();
        let pipeline = self.pipeline.to_string();
        let conn = self.conn().await?;
        for (source, at) in position.parts() {
            let cells = [Cell::Text(pipeline.as_str().into()), Cell::Text(source.into()), Cell::Text(at.into())];
            conn.execute(sql, cells).await.map_err(SqlError::write("flowgate_source_positions"))?;
        }
        Ok(())
    }

    /// The position stored for the pipeline (`Sink::stored_position`), or the one
    /// 0.1 stored when it has none of its own; `None` when not effectively-once.
    pub(super) async fn load_position(&mut self) -> Result<Option<Position>, ConnectorError> {
        if self.config.delivery != Delivery::EffectivelyOnce {
            return Ok(None);
        }
        let pipeline = self.pipeline.to_string();
        let (table, dialect) = ("flowgate_source_positions", self.dialect);
        let conn = self.conn().await?;
        let rows = conn.texts(dialect.load_positions(), &[&pipeline]).await.map_err(SqlError::write(table))?;
        let mut position = Position::default();
        for mut r in rows {
            position.set(r.swap_remove(0), r.swap_remove(0));
        }
        if position.is_empty() && self.describe("flowgate_positions").await?.is_some() {
            // Stored by 0.1: the same parts, as numbers.
            let conn = self.conn().await?;
            let rows = conn
                .texts(dialect.load_legacy_positions(), &[&pipeline])
                .await
                .map_err(SqlError::write("flowgate_positions"))?;
            for mut r in rows {
                position.set(r.swap_remove(0), r.swap_remove(0));
            }
        }
        Ok((!position.is_empty()).then_some(position))
    }
}
