//! `tokens`: the apps' tokens, by their hashes.

use rusqlite::{params, OptionalExtension};

use super::rows::{all, one, TOKEN_SELECT};
use super::Ledger;
use crate::ledger::{LedgerResult, TokenRow, Tokens};
use crate::values::{Timestamp, TokenId};

impl Tokens for Ledger {
    async fn insert_token(&self, row: TokenRow) -> LedgerResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO tokens (token_id, app, admin, token_hash, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.token_id,
                    row.app,
                    row.admin,
                    row.token_hash,
                    row.created_at,
                    row.revoked_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, hash: String) -> LedgerResult<Option<TokenRow>> {
        let sql = format!("{TOKEN_SELECT} WHERE token_hash = ?1");
        self.read(move |c| Ok(one(c, &sql, [&hash])?)).await
    }

    async fn list_tokens(&self) -> LedgerResult<Vec<TokenRow>> {
        let sql = format!("{TOKEN_SELECT} ORDER BY created_at, token_id");
        self.call(move |c| Ok(all(c, &sql, [])?)).await
    }

    async fn revoke_token(&self, token_id: TokenId, at: Timestamp) -> LedgerResult<Option<()>> {
        self.write(move |tx| {
            let exists = tx
                .query_row(
                    "SELECT 1 FROM tokens WHERE token_id = ?1",
                    [token_id],
                    |_| Ok(()),
                )
                .optional()?;
            if exists.is_some() {
                tx.execute(
                    "UPDATE tokens SET revoked_at = ?2 WHERE token_id = ?1 AND revoked_at IS NULL",
                    params![token_id, at],
                )?;
            }
            Ok(exists)
        })
        .await
    }

    async fn active_token_count(&self) -> LedgerResult<u64> {
        self.call(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL",
                [],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
        .await
    }
}
