//! `workers` and `leases`: which workers are alive, draining or stopped, and who holds a lease.

use rusqlite::params;

use super::owners::release_all;
use super::Ledger;
use crate::ledger::{Lease, LedgerResult, Workers};
use crate::values::Timestamp;

/// An SQL condition on `worker_id`: the worker has not stopped and its heartbeat is no older
/// than the parameter `alive_since` (e.g. `?2`). A worker that never wrote one is not alive.
pub(super) fn live_worker(alive_since: &str) -> String {
    format!(
        "worker_id IN (SELECT worker_id FROM workers
                       WHERE stopped_at IS NULL AND heartbeat_at >= {alive_since})"
    )
}

impl Workers for Ledger {
    async fn heartbeat(&self, worker_id: String, at: Timestamp) -> LedgerResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO workers (worker_id, started_at, heartbeat_at) VALUES (?1, ?2, ?2)
                 ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                params![worker_id, at],
            )?;
            Ok(())
        })
        .await
    }

    async fn worker_draining(&self, worker_id: String, at: Timestamp) -> LedgerResult<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE workers SET draining_at = ?2 WHERE worker_id = ?1",
                params![worker_id, at],
            )?;
            Ok(())
        })
        .await
    }

    async fn worker_stopped(&self, worker_id: String, at: Timestamp) -> LedgerResult<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE workers SET stopped_at = ?2, heartbeat_at = ?2 WHERE worker_id = ?1",
                params![worker_id, at],
            )?;
            release_all(tx, &worker_id)?;
            Ok(())
        })
        .await
    }

    async fn try_lease(&self, lease: Lease, now: Timestamp) -> LedgerResult<bool> {
        self.write(move |tx| {
            let changed = tx.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                                                  expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at < ?4",
                params![lease.name, lease.holder, lease.expires_at, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }
}
