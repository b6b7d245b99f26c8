//! The source position of effectively-once sinks, kept with the rows in table
//! `flowgate_source_positions`: stored in the batch's transaction, read back
//! when the pipeline starts.

use flowgate_sdk::{ConnectorError, Position};
use sqlx::{AssertSqlSafe, Row};

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
            sqlx::query(AssertSqlSafe(sql))
                .bind(pipeline.clone())
                .bind(source.to_string())
                .bind(at.to_string())
                .execute(&mut *conn)
                .await
                .map_err(SqlError::write("flowgate_source_positions"))?;
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
        let rows = sqlx::query(AssertSqlSafe(dialect.load_positions()))
            .bind(pipeline.clone())
            .fetch_all(conn)
            .await
            .map_err(SqlError::write(table))?;
        let mut position = Position::default();
        for r in rows {
            let source: String = r.try_get(0).map_err(SqlError::write(table))?;
            let at: String = r.try_get(1).map_err(SqlError::write(table))?;
            position.set(source, at);
        }
        if position.is_empty() && self.describe("flowgate_positions").await?.is_some() {
            // Stored by 0.1: the same parts, as numbers.
            let conn = self.conn().await?;
            let rows = sqlx::query(AssertSqlSafe(dialect.load_legacy_positions()))
                .bind(pipeline)
                .fetch_all(conn)
                .await
                .map_err(SqlError::write("flowgate_positions"))?;
            for r in rows {
                let source: String = r.try_get(0).map_err(SqlError::write("flowgate_positions"))?;
                let at: i64 = r.try_get(1).map_err(SqlError::write("flowgate_positions"))?;
                position.set(source, at.to_string());
            }
        }
        Ok((!position.is_empty()).then_some(position))
    }
}
