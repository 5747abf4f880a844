use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_hold_without_file_or_env() {
    let c = Config::load_from(None, &[]).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.max_live_sessions, 32);
    assert_eq!(c.default_model, "sonnet");
    assert_eq!(c.default_timeout_secs, 120);
    assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
}

#[test]
fn old_service_names_work() {
    let c = Config::load_from(
        None,
        &env(&[
            ("DB_PATH", "/data/clawdforge.db"),
            ("CLAWDFORGE_MAX_LIVE_SESSIONS", "5"),
            ("ACPX_BIN", "/usr/bin/acpx"),
            ("ADMIN_BOOTSTRAP_TOKEN", "root"),
            ("BIND_PORT", "9000"),
            ("DEFAULT_MODEL", "opus"),
            ("ALLOW_CIDRS", "10.0.0.0/8,192.168.1.0/24"),
        ]),
    )
    .unwrap();
    assert_eq!(c.db_path, PathBuf::from("/data/clawdforge.db"));
    assert_eq!(c.max_live_sessions, 5);
    assert_eq!(c.acpx_bin, "/usr/bin/acpx");
    assert_eq!(c.admin_bootstrap_token.as_deref(), Some("root"));
    assert_eq!(c.bind_port, 9000);
    assert_eq!(c.default_model, "opus");
    assert_eq!(c.allow_cidrs, "10.0.0.0/8,192.168.1.0/24");
}

#[test]
fn optional_numbers_from_the_environment() {
    let c = Config::load_from(None, &env(&[("CLAWDFORGE_CLAUDE_MAX_TURNS", "3")])).unwrap();
    assert_eq!(c.claude_max_turns, Some(3));
    let err = Config::load_from(None, &env(&[("CLAWDFORGE_CLAUDE_MAX_TURNS", "many")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("CLAWDFORGE_CLAUDE_MAX_TURNS"), "{err}");
}

#[test]
fn prefixed_name_wins_over_alias() {
    let c = Config::load_from(
        None,
        &env(&[("DB_PATH", "/a.db"), ("CLAWDFORGE_DB_PATH", "/b.db")]),
    )
    .unwrap();
    assert_eq!(c.db_path, PathBuf::from("/b.db"));
}

#[test]
fn numeric_looking_strings_stay_strings() {
    let c = Config::load_from(
        None,
        &env(&[
            ("ADMIN_BOOTSTRAP_TOKEN", "12345"),
            ("DEFAULT_MODEL", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(c.admin_bootstrap_token.as_deref(), Some("12345"));
    assert_eq!(c.default_model, "true");
}

#[test]
fn bad_value_names_the_variable() {
    let err = Config::load_from(None, &env(&[("CLAWDFORGE_MAX_LIVE_SESSIONS", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("CLAWDFORGE_MAX_LIVE_SESSIONS"), "{err}");
    let err = Config::load_from(None, &env(&[("BIND_PORT", "99999")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("BIND_PORT"), "{err}");
    let err = Config::load_from(None, &env(&[("DEFAULT_TIMEOUT_SECS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("DEFAULT_TIMEOUT_SECS"), "{err}");
    let err = Config::load_from(None, &env(&[("ACPX_AGENT", "  ")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ACPX_AGENT"), "{err}");
}

#[test]
fn toml_file_then_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "max_live_sessions = 7\ndefault_model = \"haiku\"\n[agents]\necho = \"node /x/agent.mjs\"\ncodex = \"codex\"\n",
    )
    .unwrap();
    let c = Config::load_from(Some(&path), &env(&[("DEFAULT_MODEL", "opus")])).unwrap();
    assert_eq!(c.max_live_sessions, 7);
    assert_eq!(c.default_model, "opus");
    let (default, table) = c.agent_table();
    assert_eq!(default, "claude");
    assert_eq!(
        table["claude"].command,
        AgentCommand::Builtin("claude".into())
    );
    assert_eq!(
        table["codex"].command,
        AgentCommand::Builtin("codex".into())
    );
    assert_eq!(
        table["echo"].command,
        AgentCommand::Custom("node /x/agent.mjs".into())
    );
    assert!(table
        .values()
        .all(|d| d.backend == BackendKind::Acpx && d.permissions == PermissionPolicy::AllowAll));
}

#[test]
fn agent_tables_give_backend_and_permissions_and_bad_ones_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let load = |toml: &str| {
        std::fs::write(&path, toml).unwrap();
        Config::load_from(Some(&path), &[])
    };
    let c = load(
        "[agents.native]\ncommand = \"node /x/agent.mjs\"\nbackend = \"acp\"\n\
         [agents.reader]\ncommand = \"codex\"\npermissions = \"allow_reads\"\n\
         [agents.claude]\ncommand = \"claude\"\nbackend = \"acp\"\npermissions = \"deny_all\"\n",
    )
    .unwrap();
    let (default, table) = c.agent_table();
    let def = |b, p, c: AgentCommand| AgentDef {
        command: c,
        backend: b,
        permissions: p,
        auth: None,
    };
    assert_eq!(
        table["native"],
        def(
            BackendKind::Acp,
            PermissionPolicy::AllowAll,
            AgentCommand::Custom("node /x/agent.mjs".into())
        )
    );
    assert_eq!(
        table["reader"],
        def(
            BackendKind::Acpx,
            PermissionPolicy::AllowReads,
            AgentCommand::Builtin("codex".into())
        )
    );
    // A table named like the default agent sets the default agent.
    assert_eq!(default, "claude");
    assert_eq!(
        table["claude"],
        def(
            BackendKind::Acp,
            PermissionPolicy::DenyAll,
            AgentCommand::Builtin("claude".into())
        )
    );
    assert_eq!(
        table["claude"].command.acp_argv().unwrap(),
        ["claude-agent-acp"]
    );

    let asking =
        load("[agents.a]\ncommand = \"node a.mjs\"\nbackend = \"acp\"\npermissions = \"ask\"\n")
            .unwrap()
            .agent_table()
            .1;
    assert_eq!(asking["a"].permissions, PermissionPolicy::Ask);
    let refused = |toml: &str, key: &str| {
        let e = load(toml).unwrap_err().to_string();
        assert!(e.contains(key), "{toml}: {e}");
    };
    refused(
        "[agents.a]\ncommand = \"x\"\npermissions = \"ask\"\n",
        "agents.a.permissions",
    );
    refused(
        "[agents.a]\ncommand = \"nosuch\"\nbackend = \"acp\"\n",
        "agents.a.command",
    );
    refused("[agents.a]\ncommand = \"\"\n", "agents.a.command");
    refused(
        "[agents.a]\ncommand = \"x\"\nbackend = \"http\"\n",
        "agents",
    );
    refused(
        "[agents.a]\ncommand = \"x\"\npermissions = \"maybe\"\n",
        "agents",
    );
}

#[test]
fn agent_auth_is_typed_at_load_and_unusable_ones_name_their_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let load = |toml: &str| {
        std::fs::write(&path, toml).unwrap();
        Config::load_from(
            Some(&path),
            &env(&[("CLAWDFORGE_AGENT_ENV", "OPENAI_API_KEY")]),
        )
    };
    let c = load(
        "[agents.codex]\ncommand = \"codex\"\nbackend = \"acp\"\n\
         auth = { method = \"api-key\", env = \"OPENAI_API_KEY\" }\n\
         [agents.gw]\ncommand = \"gemini\"\nbackend = \"acp\"\n\
         auth = { method = \"gateway\", base_url = \"http://127.0.0.1:9/v1\", \
         token_env = \"GW_TOKEN\" }\n",
    )
    .unwrap();
    let table = c.agent_table().1;
    assert_eq!(
        table["codex"].auth,
        Some(AgentAuth::Key {
            method: "api-key".into(),
            env: "OPENAI_API_KEY".into()
        })
    );
    // The gateway's token is passed over ACP: agent_env need not name it.
    assert_eq!(
        table["gw"].auth,
        Some(AgentAuth::Gateway {
            base_url: "http://127.0.0.1:9/v1".into(),
            token_env: "GW_TOKEN".into()
        })
    );
    assert_eq!(table["claude"].auth, None);

    let refused = |auth: &str, backend: &str, says: &str| {
        let toml = format!(
            "[agents.codex]\ncommand = \"codex\"\nbackend = \"{backend}\"\nauth = {auth}\n"
        );
        let e = load(&toml).unwrap_err().to_string();
        assert!(e.contains(says), "{auth}: {e}");
    };
    refused(
        r#"{ method = "api-key", env = "CODEX_API_KEY" }"#,
        "acp",
        "agents.codex.auth.env: CODEX_API_KEY is not in CLAWDFORGE_AGENT_ENV (agent_env), \
         so the agent would not get it: add it there",
    );
    refused(
        r#"{ method = "chat-gpt" }"#,
        "acp",
        "agents.codex.auth.method: \"chat-gpt\" needs a browser or a terminal",
    );
    refused(
        r#"{ method = "oauth-personal", env = "OPENAI_API_KEY" }"#,
        "acp",
        "\"oauth-personal\" needs a browser or a terminal",
    );
    refused(
        r#"{ method = "api-key", env = "OPENAI_API_KEY" }"#,
        "acpx",
        "agents.codex.auth: needs backend = \"acp\" (acpx authenticates by itself",
    );
    refused(
        r#"{ method = "api-key" }"#,
        "acp",
        "agents.codex.auth.env: method \"api-key\" needs it",
    );
    refused(
        r#"{ method = "gateway", token_env = "T" }"#,
        "acp",
        "agents.codex.auth.base_url: method \"gateway\" needs it",
    );
    refused(
        r#"{ method = "gateway", base_url = "127.0.0.1:9", token_env = "T" }"#,
        "acp",
        "is not an http(s) URL",
    );
    refused(
        r#"{ method = "api-key", env = "OPENAI_API_KEY", base_url = "http://x" }"#,
        "acp",
        "base_url and token_env are for method = \"gateway\"",
    );
    refused(r#"{ method = "api-key", key = "sk-x" }"#, "acp", "agents");
}

#[test]
fn unknown_toml_key_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "max_live_sesions = 7\n").unwrap();
    let err = Config::load_from(Some(&path), &[]).unwrap_err().to_string();
    assert!(err.contains("max_live_sesions"), "{err}");
}

#[test]
fn missing_named_file_is_an_error() {
    let err = Config::load_from(Some(Path::new("/nonexistent/c.toml")), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/c.toml"), "{err}");
}

#[test]
fn every_field_can_be_set_from_the_environment() {
    let fields = serde_json::to_value(Config::default()).unwrap();
    let mut keys: Vec<&str> = fields
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| !["agents", "app_defaults"].contains(k))
        .collect();
    keys.sort();
    let mut listed = env_keys();
    listed.sort();
    assert_eq!(keys, listed);
}

#[test]
fn nats_url_takes_several_servers() {
    let c = Config::load_from(None, &env(&[("NATS_URL", "nats://a:4222, nats://b:4223")])).unwrap();
    assert_eq!(c.nats_servers().unwrap().len(), 2);
    let err = Config::load_from(None, &env(&[("NATS_URL", "http://[bad")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("NATS_URL"), "{err}");
}

#[test]
fn durations_are_bounded_and_secrets_are_named() {
    let err = Config::load_from(
        None,
        &env(&[("CLAWDFORGE_SESSION_TTL_SECS", "18446744073709551615")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("CLAWDFORGE_SESSION_TTL_SECS"), "{err}");
    let secrets = secret_env_names();
    for name in [
        "ADMIN_BOOTSTRAP_TOKEN",
        "CLAWDFORGE_ADMIN_BOOTSTRAP_TOKEN",
        "NATS_PASSWORD",
        "NATS_TOKEN",
    ] {
        assert!(secrets.iter().any(|s| s == name), "{name}");
    }
}

#[test]
fn bad_cidrs_stop_every_command_naming_the_variable() {
    let err = Config::load_from(None, &env(&[("ALLOW_CIDRS", "10.0.0.0/33")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "configuration: ALLOW_CIDRS: `10.0.0.0/33` is not an IP network in CIDR notation \
         (such as 192.168.1.0/24 or fd00::/8): the prefix length 33 is too long: at most 32 \
         for an IPv4 address"
    );
    let err = Config::load_from(
        None,
        &env(&[("CLAWDFORGE_TRUSTED_PROXIES", "10.0.0.1, proxy")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("configuration: CLAWDFORGE_TRUSTED_PROXIES: `proxy`"),
        "{err}"
    );
}

#[test]
fn explain_shows_each_source_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "max_live_sessions = 7\nbind_port = 9001\n").unwrap();
    let (config, shown) = Config::explain(
        Some(&path),
        &env(&[
            ("BIND_PORT", "9002"),
            ("NATS_URL", "nats://forge:hunter2@a:4222,nats://tok@b:4222"),
            ("NATS_PASSWORD", "hunter2"),
            ("LOG_FORMAT", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(config.log_format, LogFormat::Json);
    let line = |key: &str| shown.iter().find(|s| s.key == key).unwrap().clone();
    assert_eq!(line("max_live_sessions").value, "7");
    assert_eq!(line("max_live_sessions").source, Source::File(path.clone()));
    assert_eq!(line("bind_port").value, "9002");
    assert_eq!(line("bind_port").source, Source::Env("BIND_PORT".into()));
    assert_eq!(line("default_model").source, Source::Default);
    assert_eq!(line("nats_password").value, "(set, hidden)");
    assert_eq!(line("nats_token").value, "-");
    assert_eq!(
        line("nats_url").value,
        "nats://forge:***@a:4222,nats://***@b:4222"
    );
    let tables = ["agents", "app_defaults"];
    assert_eq!(
        shown.len(),
        env_keys().len() + tables.len(),
        "every key, tables too"
    );
    assert!(!format!("{shown:?}").contains("hunter2"));
}

#[test]
fn secrets_come_from_files_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "from-a-file\n").unwrap();
    let file = path.to_string_lossy().into_owned();
    let c = Config::load_from(None, &env(&[("ADMIN_BOOTSTRAP_TOKEN_FILE", &file)])).unwrap();
    assert_eq!(c.admin_bootstrap_token.as_deref(), Some("from-a-file"));
    let c = Config::load_from(None, &env(&[("CLAWDFORGE_NATS_PASSWORD_FILE", &file)])).unwrap();
    assert_eq!(c.nats_password.as_deref(), Some("from-a-file"));
    let err = Config::load_from(
        None,
        &env(&[("NATS_TOKEN_FILE", &file), ("NATS_TOKEN", "x")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("NATS_TOKEN and NATS_TOKEN_FILE are both set"),
        "{err}"
    );
    let err = Config::load_from(None, &env(&[("NATS_TOKEN_FILE", "/nonexistent/t")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NATS_TOKEN_FILE: cannot read /nonexistent/t"),
        "{err}"
    );
}

#[test]
fn log_format_is_text_or_json() {
    let err = Config::load_from(None, &env(&[("CLAWDFORGE_LOG_FORMAT", "yaml")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("CLAWDFORGE_LOG_FORMAT"), "{err}");
}

#[test]
fn agent_lists_are_comma_separated_in_the_environment_and_checked() {
    let c = Config::load_from(
        None,
        &env(&[
            ("CLAWDFORGE_AGENT_ENV", "ANTHROPIC_API_KEY, MY_PROXY"),
            ("CLAWDFORGE_AGENT_CONNECT_PORTS", "443,8443"),
            ("CLAWDFORGE_AGENT_READ_DIRS", "/usr,/opt/tools"),
            ("CLAWDFORGE_AGENT_CONFINEMENT", "landlock"),
        ]),
    )
    .unwrap();
    assert_eq!(c.agent_env, ["ANTHROPIC_API_KEY", "MY_PROXY"]);
    assert_eq!(c.agent_connect_ports, [443, 8443]);
    assert_eq!(
        c.agent_read_dirs,
        [PathBuf::from("/usr"), "/opt/tools".into()]
    );
    assert_eq!(c.agent_confinement, ConfinementMode::Landlock);
    let refused = |var: &str, value: &str| {
        let err = Config::load_from(None, &env(&[(var, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(var), "{var}={value}: {err}");
    };
    refused("CLAWDFORGE_AGENT_ENV", "OK,NOT-A-NAME");
    refused("CLAWDFORGE_AGENT_CONNECT_PORTS", "443,0");
    refused("CLAWDFORGE_AGENT_CONNECT_PORTS", "https");
    refused("CLAWDFORGE_AGENT_CONFINEMENT", "sometimes");
    refused("CLAWDFORGE_AGENT_MAX_FILE_BYTES", "0");
}

#[test]
fn custom_default_agent_is_named_default() {
    let c = Config::load_from(None, &env(&[("ACPX_AGENT", "node /x/agent.mjs --fast")])).unwrap();
    let (default, table) = c.agent_table();
    assert_eq!(default, "default");
    assert_eq!(
        table["default"].command,
        AgentCommand::Custom("node /x/agent.mjs --fast".into())
    );
}

/// Whether `line` (a comment of config/clawdforge.toml without its `# `) is a setting.
fn is_setting(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, _)| {
        key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

#[test]
fn shipped_config_file_shows_every_key_with_its_default() {
    let text = include_str!("../../config/clawdforge.toml");
    let dir = tempfile::tempdir().unwrap();

    // As shipped, every setting is commented out: its presence changes nothing.
    let as_is = dir.path().join("as-is.toml");
    std::fs::write(&as_is, text).unwrap();
    assert_eq!(
        Config::load_from(Some(&as_is), &[]).unwrap(),
        Config::default()
    );

    // With the `# ` of its settings removed, it loads and shows every key with its default.
    let mut keys: Vec<String> = Vec::new();
    let mut unset: Vec<String> = Vec::new();
    let mut uncommented = String::new();
    for line in text.lines() {
        match line.strip_prefix("# ") {
            Some(table @ ("[agents]" | "[app_defaults]")) => {
                keys.push(table.trim_matches(['[', ']']).into());
                uncommented.push_str(table);
            }
            Some(setting) if is_setting(setting) => {
                let key = setting.split(" = ").next().unwrap().to_string();
                if setting.ends_with("# unset by default") {
                    unset.push(key.clone());
                }
                keys.push(key);
                uncommented.push_str(setting);
            }
            _ => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    let path = dir.path().join("uncommented.toml");
    std::fs::write(&path, &uncommented).unwrap();
    let loaded = Config::load_from(Some(&path), &[])
        .unwrap_or_else(|e| panic!("config/clawdforge.toml, uncommented: {e}"));

    let defaults = serde_json::to_value(Config::default()).unwrap();
    let mut fields: Vec<String> = defaults.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    let mut shown = keys.clone();
    shown.sort();
    assert_eq!(
        shown, fields,
        "config/clawdforge.toml must show every config key once, and no other"
    );

    let loaded = serde_json::to_value(&loaded).unwrap();
    for key in &keys {
        if unset.contains(key) {
            assert!(
                defaults[key].is_null(),
                "config/clawdforge.toml marks {key} unset by default, but its default is {}",
                defaults[key]
            );
        } else {
            assert_eq!(
                loaded[key], defaults[key],
                "config/clawdforge.toml shows {key} = {}, but its default is {}",
                loaded[key], defaults[key]
            );
        }
    }
}

#[test]
fn sources_name_the_variable_that_won_and_the_file_of_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "t\n").unwrap();
    let secret = secret.to_string_lossy().into_owned();
    let (_, shown) = Config::explain(
        None,
        &env(&[
            ("DB_PATH", "/a.db"),
            ("CLAWDFORGE_DB_PATH", "/b.db"),
            ("ACPX_BIN", "/usr/bin/acpx"),
            ("NATS_TOKEN_FILE", &secret),
        ]),
    )
    .unwrap();
    let source = |key: &str| shown.iter().find(|s| s.key == key).unwrap().source.clone();
    assert_eq!(source("db_path"), Source::Env("CLAWDFORGE_DB_PATH".into()));
    assert_eq!(source("acpx_bin"), Source::Env("ACPX_BIN".into()));
    assert_eq!(source("nats_token"), Source::Env("NATS_TOKEN_FILE".into()));
    assert_eq!(source("agents"), Source::Default);

    // A key the file misspells is the file's, whatever the environment sets.
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "max_live_sesions = 7\n").unwrap();
    let err = Config::load_from(Some(&path), &env(&[("BIND_PORT", "9000")]))
        .unwrap_err()
        .to_string();
    let file = format!(
        "bad value in config file {} (key `max_live_sesions`)",
        path.display()
    );
    assert!(err.contains(&file), "{err}");
}

#[test]
fn the_agent_protocol_is_off_by_default_and_its_heartbeat_is_a_period() {
    let config = Config::load_from(None, &[]).unwrap();
    assert!(!config.agent_protocol);
    assert_eq!(config.agent_protocol_heartbeat_secs, 30);
    let on = Config::load_from(
        None,
        &env(&[
            ("CLAWDFORGE_AGENT_PROTOCOL", "true"),
            ("CLAWDFORGE_AGENT_PROTOCOL_HEARTBEAT_SECS", "5"),
        ]),
    )
    .unwrap();
    assert!(on.agent_protocol);
    assert_eq!(on.agent_protocol_heartbeat_secs, 5);
    for bad in ["0", "999999999999"] {
        let err = Config::load_from(
            None,
            &env(&[("CLAWDFORGE_AGENT_PROTOCOL_HEARTBEAT_SECS", bad)]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CLAWDFORGE_AGENT_PROTOCOL_HEARTBEAT_SECS"),
            "{err}"
        );
    }
}
