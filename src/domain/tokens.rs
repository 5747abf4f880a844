//! Bearer tokens: minted per app, shown once, stored as SHA-256 hashes, compared in constant
//! time, checked against the ledger on every request so that a revocation holds at once on
//! every worker.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::types::{AppName, TokenId};
use super::Forge;
use crate::error::{Error, Result};
use crate::ledger::{Ledger, TokenRow, Tokens};
use crate::values::Timestamp;
use crate::wire;

/// The app the bootstrap token acts as.
pub const BOOTSTRAP_APP: &str = "admin";

/// Who is calling: the app a token belongs to, and the limits its work is admitted under
/// (its policy over the defaults, read once per request by the pipeline).
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub app: AppName,
    pub admin: bool,
    pub limits: std::sync::Arc<crate::quota::Limits>,
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
                    app: AppName::stored(BOOTSTRAP_APP.into()),
                    admin: true,
                    limits: Default::default(),
                });
            }
        }
        let row = self.ledger.token_by_hash(hex::encode(given)).await?;
        match row {
            Some(row) if row.revoked_at.is_none() => {
                let stored = hex::decode(&row.token_hash).map_err(Error::internal)?;
                if bool::from(stored.as_slice().ct_eq(&given)) {
                    Ok(Caller {
                        app: AppName::stored(row.app),
                        admin: row.admin,
                        limits: Default::default(),
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
        create(&self.ledger, req).await
    }

    pub async fn list_tokens(&self, caller: &Caller, _req: wire::Empty) -> Result<wire::TokenList> {
        Self::require_admin(caller)?;
        list(&self.ledger).await
    }

    pub async fn revoke_token(&self, caller: &Caller, id: TokenId) -> Result<wire::TokenRevoked> {
        Self::require_admin(caller)?;
        revoke(&self.ledger, id).await
    }
}

// The token operations on a ledger, without a caller: the service calls them for an admin, and
// the operator's `clawdforge token` command calls them on the ledger file directly.

/// Mints a token for an app. The token is in the answer only; the ledger keeps its hash.
pub async fn create(ledger: &Ledger, req: wire::TokenCreate) -> Result<wire::TokenCreated> {
    let app = AppName::parse(&req.app)?;
    let secret = mint();
    let row = TokenRow {
        token_id: TokenId::new(),
        app: app.as_str().to_string(),
        admin: req.admin,
        token_hash: hex::encode(hash(&secret)),
        created_at: Timestamp::now(),
        revoked_at: None,
    };
    ledger.insert_token(row.clone()).await?;
    tracing::info!(token_id = %row.token_id, app = %row.app, admin = row.admin, "token created");
    Ok(wire::TokenCreated {
        token_id: row.token_id.to_string(),
        app: row.app,
        admin: row.admin,
        token: secret,
        created_at: row.created_at.to_string(),
    })
}

/// Every token, revoked ones included, oldest first; never the tokens themselves.
pub async fn list(ledger: &Ledger) -> Result<wire::TokenList> {
    let rows = ledger.list_tokens().await?;
    Ok(wire::TokenList {
        tokens: rows
            .into_iter()
            .map(|r| wire::TokenInfo {
                token_id: r.token_id.to_string(),
                app: r.app,
                admin: r.admin,
                created_at: r.created_at.to_string(),
                revoked_at: r.revoked_at.map(|t| t.to_string()),
            })
            .collect(),
    })
}

/// Revokes a token; revoking it again answers the same. `not_found` when there is no such token.
pub async fn revoke(ledger: &Ledger, id: TokenId) -> Result<wire::TokenRevoked> {
    let found = ledger.revoke_token(id, Timestamp::now()).await?;
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

    #[tokio::test]
    async fn tokens_on_a_ledger_without_the_service() {
        use crate::error::ErrorKind;
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.db")).unwrap();
        let req = |app: &str| wire::TokenCreate {
            app: app.into(),
            admin: false,
        };
        let created = create(&ledger, req("notes")).await.unwrap();
        let row = ledger
            .token_by_hash(hex::encode(hash(&created.token)))
            .await
            .unwrap()
            .expect("the ledger keeps the token's hash");
        assert_eq!((row.app.as_str(), row.admin), ("notes", false));
        assert_ne!(row.token_hash, created.token);

        let listed = list(&ledger).await.unwrap();
        assert_eq!(listed.tokens.len(), 1);
        assert_eq!(listed.tokens[0].token_id, created.token_id);
        revoke(&ledger, TokenId::parse(&created.token_id).unwrap())
            .await
            .unwrap();
        assert!(list(&ledger).await.unwrap().tokens[0].revoked_at.is_some());

        let unknown = revoke(&ledger, TokenId::new()).await;
        assert_eq!(unknown.unwrap_err().kind, ErrorKind::NotFound);
        let bad = create(&ledger, req("bad app")).await;
        assert_eq!(bad.unwrap_err().kind, ErrorKind::BadRequest);
    }
}
