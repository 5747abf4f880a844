//! The tokens: every token (revoked ones too), minting one (shown once, on the answer to the
//! form, never again) and revoking one.

use askama::Template;
use axum::extract::{Path, State};
use axum::Form;
use serde::Deserialize;

use super::view::{Chrome, Section};
use super::{Admin, CsrfOnly, Page, Sidecar};
use crate::domain::Op;
use crate::wire;

#[derive(Template)]
#[template(path = "console/tokens.html")]
struct TokensPage {
    chrome: Chrome,
    tokens: Vec<wire::TokenInfo>,
    /// The token just minted: its secret is shown this once.
    minted: Option<wire::TokenCreated>,
    csrf: String,
}

async fn tokens_page(s: &Sidecar, admin: &Admin, minted: Option<wire::TokenCreated>) -> Page {
    let list: wire::TokenList = match s.console_call(admin, Op::TokenList, &wire::Empty {}).await {
        Ok(list) => list,
        Err(err) => return err.into(),
    };
    Page::render(&TokensPage {
        chrome: Chrome::for_admin(Section::Tokens, admin.csrf()),
        tokens: list.tokens,
        minted,
        csrf: admin.csrf().to_string(),
    })
}

/// `GET /console/tokens`.
#[tracing::instrument(name = "console.tokens", skip_all)]
pub(super) async fn list(State(s): State<Sidecar>, admin: Admin) -> Page {
    tokens_page(&s, &admin, None).await
}

#[derive(Deserialize)]
pub(super) struct MintForm {
    #[serde(default)]
    csrf: String,
    app: String,
    /// A checkbox: present ("on") when ticked.
    #[serde(default)]
    admin: Option<String>,
}

/// `POST /console/tokens`: mints a token and answers with the page that shows it once (not a
/// redirect: the secret is in no address and no later page).
#[tracing::instrument(name = "console.mint", skip_all)]
pub(super) async fn mint(
    State(s): State<Sidecar>,
    admin: Admin,
    Form(form): Form<MintForm>,
) -> Page {
    if let Err(page) = admin.check_csrf(&form.csrf) {
        return page;
    }
    let asked = wire::TokenCreate {
        app: form.app.trim().to_string(),
        admin: form.admin.is_some(),
    };
    match s.console_call(&admin, Op::TokenCreate, &asked).await {
        Ok(created) => {
            tracing::info!(app = %asked.app, admin = asked.admin, "a token was minted from the console");
            tokens_page(&s, &admin, Some(created)).await
        }
        Err(err) => err.into(),
    }
}

/// `POST /console/tokens/{id}/revoke`.
#[tracing::instrument(name = "console.revoke", skip_all, fields(token = %id))]
pub(super) async fn revoke(
    State(s): State<Sidecar>,
    admin: Admin,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Page {
    if let Err(page) = admin.check_csrf(&form.csrf) {
        return page;
    }
    let asked = wire::TokenRevoke { token_id: id };
    let revoked: Result<wire::TokenRevoked, _> =
        s.console_call(&admin, Op::TokenRevoke, &asked).await;
    match revoked {
        Ok(_) => Page::see_other("/console/tokens"),
        Err(err) => err.into(),
    }
}
