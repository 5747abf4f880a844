use super::*;

/// Bun's crash banner as Claude Code's executable prints it (oven-sh/bun#32418, with the
/// `Features:` line of oven-sh/bun#31409, which holds the word "abort").
const BUN_CRASH: &str = "\
============================================================
Bun v1.3.14 (2a41ca97) Linux arm64
Linux Kernel v6.12.62 | glibc v2.41
CPU: neon fp aes crc32 atomics
Args: \"claude\"
Features: Bun.stderr(2) Bun.stdin(2) Bun.stdout(2) WebSocket abort_signal(18) fetch(134) jsc spawn(35) standalone_executable
Elapsed: 2ms | User: 3ms | Sys: 0ms
RSS: 18.15MB | Peak: 7.57MB | Commit: 18.15MB | Faults: 0

panic(main thread): Bus error at address 0xF1B8830
oh no: Bun has crashed. This indicates a bug in Bun, not your code.

To send a redacted crash report to Bun's team,
please file a GitHub issue using the link below:

 https://bun.report/1.3.14/L_12a41ca9AA+gEuuy3nCmtn3nC2lxI2zxImjl3nCA4AgjkujP
";

/// Node 22 on an uncaught error thrown at the top of an ES module.
const NODE_THROW: &str = "\
file:///work/main/tests/fixtures/acp-agent.mjs:45
  throw new Error(\"the test agent crashed at start (--crash-at-start)\");
        ^

Error: the test agent crashed at start (--crash-at-start)
    at file:///work/main/tests/fixtures/acp-agent.mjs:45:9
    at ModuleJob.run (node:internal/modules/esm/module_job:343:25)
    at async onImport.tracePromise.__proto__ (node:internal/modules/esm/loader:681:26)
    at async asyncRunEntryPointWithESMLoader (node:internal/modules/run_main:117:5)

Node.js v22.23.5
";

/// Node 22 when its script is missing (a CommonJS entry point).
const NODE_MISSING_MODULE: &str = "\
node:internal/modules/cjs/loader:1228
  throw err;
  ^

Error: Cannot find module '/opt/agents/my-agent.js'
    at Module._resolveFilename (node:internal/modules/cjs/loader:1225:15)
    at Module._load (node:internal/modules/cjs/loader:1051:27)
    at node:internal/main/run_main_module:28:49 {
  code: 'MODULE_NOT_FOUND',
  requireStack: []
}

Node.js v22.12.0
";

#[test]
fn a_bun_crash_banner_gives_its_panic_line() {
    assert_eq!(
        useful_line(BUN_CRASH).as_deref(),
        Some("panic(main thread): Bus error at address 0xF1B8830")
    );
}

#[test]
fn a_node_stack_gives_its_error_line_not_the_source_excerpt() {
    assert_eq!(
        useful_line(NODE_THROW).as_deref(),
        Some("Error: the test agent crashed at start (--crash-at-start)")
    );
    assert_eq!(
        useful_line(NODE_MISSING_MODULE).as_deref(),
        Some("Error: Cannot find module '/opt/agents/my-agent.js'")
    );
}

#[test]
fn without_an_error_line_the_last_line_that_is_not_noise() {
    let said = "[agent 12] starting\n[agent 12] listening on stdio\n\n----\n";
    assert_eq!(
        useful_line(said).as_deref(),
        Some("[agent 12] listening on stdio")
    );
    assert_eq!(useful_line(""), None);
    assert_eq!(useful_line("=====\n\n   \nNode.js v22.1.0\n"), None);
    // A separator box around an error is not a banner.
    let boxed = "=====\nERROR: no credentials\n=====\n";
    assert_eq!(useful_line(boxed).as_deref(), Some("ERROR: no credentials"));
}

#[test]
fn endings_name_the_signal() {
    assert_eq!(Ending::Code(1).to_string(), "exited with code 1");
    assert_eq!(
        Ending::Signal(6).to_string(),
        "was killed by signal SIGABRT"
    );
    assert_eq!(
        Ending::Signal(9).to_string(),
        "was killed by signal SIGKILL"
    );
}

fn label(argv: &[&str]) -> AgentLabel {
    let argv: Vec<String> = argv.iter().map(ToString::to_string).collect();
    AgentLabel::new("claude", &argv)
}

#[test]
fn messages_say_what_happened() {
    let fault = |fault| AgentFault {
        agent: label(&["claude-agent-acp"]),
        fault,
    };
    let killed = fault(Fault::Ended {
        ending: Ending::Signal(6),
        phase: Phase::Start,
        said: useful_line(BUN_CRASH),
    });
    assert_eq!(
        killed.to_string(),
        "agent `claude` (claude-agent-acp) was killed by signal SIGABRT at start: \
             panic(main thread): Bus error at address 0xF1B8830"
    );
    let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
    let not_found =
        AgentFault::not_started(label(&["claude-agent-acp"]), &missing, "/usr/bin:/bin");
    assert_eq!(
        not_found.to_string(),
        "agent `claude` could not be started: `claude-agent-acp` not found on PATH \
             (PATH=/usr/bin:/bin)"
    );
    let absent = AgentFault::not_started(label(&["/opt/x/agent"]), &missing, "/bin");
    assert_eq!(
        absent.to_string(),
        "agent `claude` could not be started: `/opt/x/agent` does not exist"
    );
    let auth = fault(Fault::NeedsAuth {
        offers: vec![offer("claude-login", "Log in with Claude Code")],
        gap: AuthGap::Unconfigured,
    });
    assert!(
        auth.to_string().starts_with(
            "agent `claude` needs authentication: it offers claude-login (Log in with Claude \
                 Code); set ANTHROPIC_API_KEY"
        ),
        "{auth}"
    );
}

fn offer(id: &str, name: &str) -> AuthOffer {
    AuthOffer {
        id: id.into(),
        name: name.into(),
        terminal: false,
    }
}

fn needs_auth(argv: &[&str], name: &str, offers: Vec<AuthOffer>, gap: AuthGap) -> String {
    let argv: Vec<String> = argv.iter().map(ToString::to_string).collect();
    let agent = AgentLabel::new(name, &argv);
    AgentFault::new(agent, Fault::NeedsAuth { offers, gap }).to_string()
}

#[test]
fn an_agent_that_wants_credentials_is_told_how_to_configure_them() {
    let codex = || vec![offer("api-key", "API Key"), offer("chat-gpt", "ChatGPT")];
    assert_eq!(
        needs_auth(&["codex-acp"], "codex", codex(), AuthGap::Unconfigured),
        "agent `codex` needs authentication: it offers api-key (API Key), chat-gpt (ChatGPT); \
             set `auth = { method = \"api-key\", env = \"OPENAI_API_KEY\" }` under [agents.codex] \
             and name OPENAI_API_KEY in agent_env (CLAWDFORGE_AGENT_ENV)"
    );
    // Gemini's browser login comes first; the key method is the one a worker can use.
    let gemini = vec![
        offer("oauth-personal", "Log in with Google"),
        offer("gemini-api-key", "Gemini API key"),
        offer("gateway", "AI API Gateway"),
    ];
    let said = needs_auth(
        &["gemini", "--acp"],
        "g",
        gemini.clone(),
        AuthGap::Unconfigured,
    );
    assert!(
        said.ends_with(
            "set `auth = { method = \"gemini-api-key\", env = \"GEMINI_API_KEY\" }` under \
                 [agents.g] and name GEMINI_API_KEY in agent_env (CLAWDFORGE_AGENT_ENV)"
        ),
        "{said}"
    );
    let other = needs_auth(
        &["node", "a.mjs"],
        "x",
        vec![offer("login", "")],
        AuthGap::Unconfigured,
    );
    assert!(other.contains("env = \"<VARIABLE>\" }` under [agents.x], <VARIABLE> being"));
    let gateway_only = vec![offer("gateway", "Gateway")];
    let said = needs_auth(&["node", "a.mjs"], "x", gateway_only, AuthGap::Unconfigured);
    assert!(said.ends_with("base_url = \"<URL>\", token_env = \"<VARIABLE>\" }` under [agents.x]"));
    // acpx authenticates by itself.
    assert_eq!(
        needs_auth(&["gemini", "--acp"], "g", gemini, AuthGap::ByAcpx),
        "agent `g` needs authentication: it offers oauth-personal (Log in with Google), \
             gemini-api-key (Gemini API key), gateway (AI API Gateway); acpx authenticates by \
             itself with the first method whose ACPX_AUTH_<METHOD> variable is set: set \
             ACPX_AUTH_GEMINI_API_KEY (and GEMINI_API_KEY, which the agent reads its key from) in \
             the worker's environment and name it in agent_env (CLAWDFORGE_AGENT_ENV)"
    );
    let method = || "api-key".to_string();
    let missing = AuthGap::Missing {
        method: method(),
        variable: "OPENAI_API_KEY".into(),
    };
    assert_eq!(
        needs_auth(&["codex-acp"], "codex", codex(), missing),
        "agent `codex` needs authentication with `api-key`, but OPENAI_API_KEY, which its \
             auth names, is not set in the worker's environment: set it there"
    );
    let gateway = AuthGap::NotOffered {
        method: "gateway".into(),
    };
    assert_eq!(
        needs_auth(&["codex-acp"], "codex", codex(), gateway),
        "agent `codex` needs authentication, but not with `gateway`, the method of its auth: \
             it offers api-key (API Key), chat-gpt (ChatGPT); change `auth` under [agents.codex]"
    );
    assert_eq!(acpx_auth_variable("api-key"), "ACPX_AUTH_API_KEY");
    assert_eq!(acpx_auth_variable("xai.api_key"), "ACPX_AUTH_XAI_API_KEY");
    assert_eq!(acpx_auth_variable("-odd--one-"), "ACPX_AUTH_ODD_ONE");
}
