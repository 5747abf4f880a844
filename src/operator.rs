//! The operator's commands on the ledger directly, without NATS: tokens (`clawdforge token`),
//! apps' policies (`clawdforge app set|show|list`) and usage (`clawdforge usage`), answered as
//! the admin subjects answer, and the tables they print.

use crate::app::command_ledger;
use crate::config::Config;
use crate::domain::apps;
use crate::domain::types::AppName;
use crate::error::ErrorKind;
use crate::quota::Limit;
use crate::wire::{self, Policy, PolicySet, Source};

/// A domain error of a command, as the operator reads it.
fn command_error(config: &Config, e: crate::error::Error) -> anyhow::Error {
    match e.kind {
        ErrorKind::Internal => anyhow::anyhow!(
            "the ledger {} could not be used (see the log above)",
            config.db_path.display()
        ),
        _ => anyhow::anyhow!("{}", e.message),
    }
}

/// `clawdforge token create`: mints a token on the ledger directly, as
/// `forge.admin.token.create` does. The token is in the answer only.
pub async fn token_create(
    config: &Config,
    app: &str,
    admin: bool,
) -> anyhow::Result<crate::wire::TokenCreated> {
    let ledger = command_ledger(config, true).await?;
    let req = crate::wire::TokenCreate {
        app: app.to_string(),
        admin,
    };
    crate::domain::tokens::create(&ledger, req)
        .await
        .map_err(|e| command_error(config, e))
}

/// `clawdforge token list`: every token of the ledger, oldest first.
pub async fn token_list(config: &Config) -> anyhow::Result<crate::wire::TokenList> {
    let ledger = command_ledger(config, false).await?;
    crate::domain::tokens::list(&ledger)
        .await
        .map_err(|e| command_error(config, e))
}

/// `clawdforge token revoke`: revokes a token; every worker refuses it from its next request on.
pub async fn token_revoke(
    config: &Config,
    token_id: &str,
) -> anyhow::Result<crate::wire::TokenRevoked> {
    let ledger = command_ledger(config, false).await?;
    let revoked = match crate::values::TokenId::parse(token_id) {
        Ok(id) => crate::domain::tokens::revoke(&ledger, id).await,
        Err(e) => Err(e),
    };
    revoked.map_err(|e| match e.kind {
        ErrorKind::NotFound => anyhow::anyhow!(
            "no token with id {token_id} in the ledger {}",
            config.db_path.display()
        ),
        _ => command_error(config, e),
    })
}

/// `clawdforge app set`: as `forge.admin.app.set`.
pub async fn app_set(config: &Config, change: PolicySet) -> anyhow::Result<Policy> {
    let ledger = command_ledger(config, true).await?;
    let (_, agents) = config.agent_table();
    let agents: Vec<&str> = agents.keys().map(String::as_str).collect();
    apps::set_policy(&ledger, change, &agents, &config.app_defaults)
        .await
        .map_err(|e| command_error(config, e))
}

/// `clawdforge app show`: as `forge.admin.app.get`.
pub async fn app_show(config: &Config, app: &str) -> anyhow::Result<Policy> {
    let app = AppName::parse(app).map_err(|e| command_error(config, e))?;
    let ledger = command_ledger(config, false).await?;
    apps::get_policy(&ledger, app, &config.app_defaults)
        .await
        .map_err(|e| command_error(config, e))
}

/// `clawdforge app list`: as `forge.admin.app.list`.
pub async fn app_list(config: &Config) -> anyhow::Result<wire::PolicyList> {
    let ledger = command_ledger(config, false).await?;
    apps::list_policies(&ledger, &config.app_defaults)
        .await
        .map_err(|e| command_error(config, e))
}

/// `clawdforge usage`: as `forge.admin.usage`.
pub async fn usage(config: &Config, asked: wire::UsageAsked) -> anyhow::Result<wire::UsageDays> {
    let ledger = command_ledger(config, false).await?;
    apps::usage_days(&ledger, asked)
        .await
        .map_err(|e| command_error(config, e))
}

/// `rows` as a table: a header, then aligned columns two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A policy field's value as the tables show it: `-` for none.
fn value_of(policy: &Policy, limit: Limit) -> String {
    let json = serde_json::to_value(&policy.fields).unwrap_or_default();
    match json.get(limit.name()) {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(serde_json::Value::Array(items)) => {
            let names: Vec<&str> = items.iter().filter_map(|v| v.as_str()).collect();
            names.join(",")
        }
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `app show`: each field, its value and where it comes from.
pub fn policy_table(policy: &Policy) -> String {
    let mut rows = vec![vec!["FIELD".into(), "VALUE".into(), "SOURCE".into()]];
    for limit in Limit::ALL {
        let source = match policy.sources.get(limit.name()) {
            Some(Source::App) => "app",
            _ => "default",
        };
        rows.push(vec![
            limit.name().into(),
            value_of(policy, limit),
            source.into(),
        ]);
    }
    let updated = policy
        .updated_at
        .as_deref()
        .unwrap_or("never (defaults only)");
    format!("app {}, changed {updated}\n{}", policy.app, table(&rows))
}

/// `app list`: each app and the fields its own policy sets.
pub fn policies_table(apps: &[Policy]) -> String {
    let mut rows = vec![vec!["APP".into(), "UPDATED_AT".into(), "OWN POLICY".into()]];
    for policy in apps {
        let own: Vec<String> = Limit::ALL
            .into_iter()
            .filter(|l| policy.sources.get(l.name()) == Some(&Source::App))
            .map(|l| format!("{}={}", l.name(), value_of(policy, l)))
            .collect();
        let own = if own.is_empty() {
            "-".into()
        } else {
            own.join(" ")
        };
        let updated = policy.updated_at.clone().unwrap_or_else(|| "-".into());
        rows.push(vec![policy.app.clone(), updated, own]);
    }
    table(&rows)
}

/// `usage`: a row per app and day.
pub fn usage_table(days: &[wire::UsageDay]) -> String {
    let header = [
        "DATE",
        "APP",
        "SESSIONS",
        "TURNS",
        "RUNS",
        "RUNS_USD",
        "AGENT_USD",
        "REFUSED",
    ];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for d in days {
        let refused: Vec<String> = d.refused.iter().map(|(l, n)| format!("{l}={n}")).collect();
        rows.push(vec![
            d.date.clone(),
            d.app.clone(),
            d.sessions_created.to_string(),
            d.turns.to_string(),
            d.runs.to_string(),
            format!("{:.4}", d.runs_usd),
            format!("{:.4}", d.agent_usd),
            if refused.is_empty() {
                "-".into()
            } else {
                refused.join(" ")
            },
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["A".to_string(), "LONGER".to_string(), "C".to_string()],
            vec!["xyz".to_string(), "b".to_string(), "".to_string()],
        ];
        assert_eq!(table(&rows), "A    LONGER  C\nxyz  b\n");
    }

    #[test]
    fn a_policy_shows_each_field_and_its_source() {
        let own = wire::PolicyFields {
            agents: Some(vec!["claude".into(), "native".into()]),
            max_open_sessions: Some(2),
            ..Default::default()
        };
        let defaults = wire::PolicyFields {
            runs_usd_per_month: Some(5.0),
            ..Default::default()
        };
        let row = crate::ledger::PolicyRow {
            app: "notes".into(),
            fields: own,
            updated_at: "2026-01-01T00:00:00.000Z".parse().unwrap(),
        };
        let policy = apps::policy_reply("notes", Some(&row), &defaults);
        let shown = policy_table(&policy);
        let row = |field: &str| {
            let line = shown.lines().find(|l| l.starts_with(&format!("{field} ")));
            line.unwrap_or_else(|| panic!("{field}: {shown}"))
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("agents"), ["agents", "claude,native", "app"]);
        assert_eq!(row("max_open_sessions"), ["max_open_sessions", "2", "app"]);
        assert_eq!(
            row("runs_usd_per_month"),
            ["runs_usd_per_month", "5.0", "default"]
        );
        assert_eq!(row("turns_per_day"), ["turns_per_day", "-", "default"]);
        assert_eq!(shown.lines().count(), 2 + Limit::ALL.len());
        let listed = policies_table(&[policy]);
        assert!(
            listed.contains("agents=claude,native max_open_sessions=2"),
            "{listed}"
        );
    }
}
