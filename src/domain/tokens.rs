//! Bearer tokens: minted per app, shown once, stored as SHA-256 hashes, compared in constant
//! time, checked against the ledger on every request so that a revocation holds at once on
//! every worker.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::types::{AppName, TokenId};
use super::{now, Forge};
use crate::error::{Error, Result};
use crate::ledger::TokenRow;
use crate::wire;

/// The app the bootstrap token acts as.
pub const BOOTSTRAP_APP: &str = "admin";

/// Who is calling: the app a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub app: String,
    pub admin: bool,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn mint() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "cf_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl Forge {
    /// The caller behind a bearer token; `unauthorized` when it is missing, unknown or revoked.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Caller> {
        let token = token.ok_or_else(|| Error::unauthorized("missing bearer token"))?;
        let given = hash(token);
        if let Some(root) = &self.settings.admin_bootstrap_token {
            if bool::from(given.ct_eq(&hash(root))) {
                return Ok(Caller {
                    app: BOOTSTRAP_APP.into(),
                    admin: true,
                });
            }
        }
        let row = self
            .ledger
            .token_by_hash(hex::encode(given))
            .await
            .map_err(Error::internal)?;
        match row {
            Some(row) if row.revoked_at.is_none() => {
                let stored = hex::decode(&row.token_hash).map_err(Error::internal)?;
                if bool::from(stored.as_slice().ct_eq(&given)) {
                    Ok(Caller {
                        app: row.app,
                        admin: row.admin,
                    })
                } else {
                    Err(Error::unauthorized("unknown token"))
                }
            }
            Some(_) => Err(Error::unauthorized("token revoked")),
            None => Err(Error::unauthorized("unknown token")),
        }
    }

    fn require_admin(caller: &Caller) -> Result<()> {
        if caller.admin {
            Ok(())
        } else {
            Err(Error::forbidden("this needs an admin token"))
        }
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        req: wire::TokenCreate,
    ) -> Result<wire::TokenCreated> {
        Self::require_admin(caller)?;
        let app = AppName::parse(&req.app)?;
        let secret = mint();
        let row = TokenRow {
            token_id: TokenId::new().as_string(),
            app: app.as_str().to_string(),
            admin: req.admin,
            token_hash: hex::encode(hash(&secret)),
            created_at: now(),
            revoked_at: None,
        };
        self.ledger
            .insert_token(row.clone())
            .await
            .map_err(Error::internal)?;
        tracing::info!(token_id = %row.token_id, app = %row.app, admin = row.admin, "token created");
        Ok(wire::TokenCreated {
            token_id: row.token_id,
            app: row.app,
            admin: row.admin,
            token: secret,
            created_at: row.created_at,
        })
    }

    pub async fn list_tokens(&self, caller: &Caller, _req: wire::Empty) -> Result<wire::TokenList> {
        Self::require_admin(caller)?;
        let rows = self.ledger.list_tokens().await.map_err(Error::internal)?;
        Ok(wire::TokenList {
            tokens: rows
                .into_iter()
                .map(|r| wire::TokenInfo {
                    token_id: r.token_id,
                    app: r.app,
                    admin: r.admin,
                    created_at: r.created_at,
                    revoked_at: r.revoked_at,
                })
                .collect(),
        })
    }

    pub async fn revoke_token(
        &self,
        caller: &Caller,
        req: wire::TokenRevoke,
    ) -> Result<wire::TokenRevoked> {
        Self::require_admin(caller)?;
        let id = TokenId::parse(&req.token_id)?;
        let found = self
            .ledger
            .revoke_token(id.as_string(), now())
            .await
            .map_err(Error::internal)?;
        match found {
            Some(()) => {
                tracing::info!(token_id = %id.as_string(), "token revoked");
                Ok(wire::TokenRevoked {
                    token_id: id.as_string(),
                    revoked: true,
                })
            }
            None => Err(Error::not_found("no such token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_long_and_distinct() {
        let a = mint();
        let b = mint();
        assert_ne!(a, b);
        assert!(a.starts_with("cf_") && a.len() == 46, "{a}");
    }
}
