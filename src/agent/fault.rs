//! Why an agent process failed, said the same way by every backend and by `agents check`: it
//! could not be started (not found, or refused), it ended (a code or a signal, at start or
//! later), or it asked for credentials. The message names the agent, what happened, and the
//! first line of its stderr that reads like an error; the whole tail of its stderr goes to the
//! worker's log once, at warn, when the fault becomes an `AgentError` (`AgentFault::report`,
//! beside that error in `backend`).

use std::fmt;
use std::process::ExitStatus;

use crate::agent::def::{GATEWAY_METHOD, INTERACTIVE_AUTH_METHODS};

/// Longest line of an agent's stderr quoted in a message.
const MAX_QUOTED: usize = 300;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Code(i32),
    Signal(i32),
}

impl Ending {
    pub fn of(status: ExitStatus) -> Ending {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Ending::Code(code),
            (None, Some(signal)) => Ending::Signal(signal),
            // Stopped or continued: not an end; said as what wait(2) gave.
            (None, None) => Ending::Code(status.into_raw()),
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Code(code) => write!(f, "exited with code {code}"),
            Ending::Signal(n) => match nix::sys::signal::Signal::try_from(*n) {
                Ok(signal) => write!(f, "was killed by signal {}", signal.as_str()),
                Err(_) => write!(f, "was killed by signal {n}"),
            },
        }
    }
}

/// What the agent was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before it answered `initialize`.
    Start,
    /// During `session/new` or `session/load`.
    Session,
    /// During a prompt.
    Turn,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Start => "at start",
            Phase::Session => "while starting a session",
            Phase::Turn => "during a turn",
        })
    }
}

/// Which agent: its configured name and the command line that starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLabel {
    pub name: String,
    pub argv: Vec<String>,
}

impl AgentLabel {
    pub fn new(name: &str, argv: &[String]) -> AgentLabel {
        AgentLabel {
            name: name.to_string(),
            argv: argv.to_vec(),
        }
    }

    fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or_default()
    }
}

impl fmt::Display for AgentLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent `{}` ({})", self.name, self.argv.join(" "))
    }
}

/// An authentication method an agent offers in its `initialize` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOffer {
    pub id: String,
    pub name: String,
    /// A `terminal` method: the client would run the agent interactively, not `authenticate`.
    pub terminal: bool,
}

impl AuthOffer {
    /// Whether a worker can use it: not a terminal method, nor one that needs a browser.
    fn usable(&self) -> bool {
        !self.terminal && !INTERACTIVE_AUTH_METHODS.contains(&self.id.as_str())
    }
}

impl fmt::Display for AuthOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() || self.name == self.id {
            f.write_str(&self.id)
        } else {
            write!(f, "{} ({})", self.id, self.name)
        }
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The program does not exist (`search_path`: the PATH it was looked up on, for a bare name).
    Missing {
        program: String,
        search_path: Option<String>,
    },
    /// The program exists but could not be executed.
    NotStarted { program: String, reason: String },
    /// The process ended; `said`: the first useful line of its stderr.
    Ended {
        ending: Ending,
        phase: Phase,
        said: Option<String>,
    },
    /// The process closed its connection but did not exit.
    HungUp { phase: Phase, said: Option<String> },
    /// It answered ACP error -32000 (authentication required), and this is why it was not
    /// (or could not be) authenticated.
    NeedsAuth {
        offers: Vec<AuthOffer>,
        gap: AuthGap,
    },
}

/// Why an agent that asks for credentials is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthGap {
    /// No `auth` is configured for it (native backend).
    Unconfigured,
    /// An acpx agent (seen by `agents check`): acpx authenticates its agents by itself.
    ByAcpx,
    /// Its configured method is not one it offers.
    NotOffered { method: String },
    /// The variable its configured method needs is not set in the worker's environment.
    Missing { method: String, variable: String },
    /// It answered `authenticate` with an error.
    Refused { method: String, said: String },
    /// It still asks, with its configured method sent or not needed until then.
    Rejected { method: String },
}

/// A failed agent, as an operator and an app read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFault {
    pub agent: AgentLabel,
    pub fault: Fault,
}

impl AgentFault {
    pub fn new(agent: AgentLabel, fault: Fault) -> AgentFault {
        AgentFault { agent, fault }
    }

    /// The fault of an agent whose program could not be started; `search_path` is the PATH it
    /// was looked up on.
    pub fn not_started(agent: AgentLabel, e: &std::io::Error, search_path: &str) -> Self {
        let program = agent.program().to_string();
        let fault = if e.kind() == std::io::ErrorKind::NotFound {
            Fault::Missing {
                search_path: (!program.contains('/')).then(|| search_path.to_string()),
                program,
            }
        } else {
            Fault::NotStarted {
                program,
                reason: e.to_string(),
            }
        };
        AgentFault { agent, fault }
    }
}

impl fmt::Display for AgentFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.agent.name;
        match &self.fault {
            Fault::Missing {
                program,
                search_path: Some(path),
            } => write!(
                f,
                "agent `{name}` could not be started: `{program}` not found on PATH (PATH={path})"
            ),
            Fault::Missing { program, .. } => write!(
                f,
                "agent `{name}` could not be started: `{program}` does not exist"
            ),
            Fault::NotStarted { program, reason } => write!(
                f,
                "agent `{name}` could not be started: `{program}`: {reason}"
            ),
            Fault::Ended {
                ending,
                phase,
                said,
            } => write!(f, "{} {ending} {phase}{}", self.agent, quoted(said)),
            Fault::HungUp { phase, said } => write!(
                f,
                "{} closed its connection {phase}{}",
                self.agent,
                quoted(said)
            ),
            Fault::NeedsAuth { offers, gap } => {
                let program = Credentials::of(self.agent.program());
                needs_auth(f, name, program, offers, gap)
            }
        }
    }
}

/// What to say of an agent `name` that asks for credentials, and what to do about it.
fn needs_auth(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    program: Credentials,
    offers: &[AuthOffer],
    gap: &AuthGap,
) -> fmt::Result {
    let offered = offered(offers);
    match gap {
        AuthGap::Unconfigured => write!(
            f,
            "agent `{name}` needs authentication: {offered}; {}",
            configure(name, program, offers)
        ),
        AuthGap::ByAcpx => write!(
            f,
            "agent `{name}` needs authentication: {offered}; {}",
            by_acpx(program, offers)
        ),
        AuthGap::NotOffered { method } => write!(
            f,
            "agent `{name}` needs authentication, but not with `{method}`, the method of its \
             auth: {offered}; change `auth` under [agents.{name}]"
        ),
        AuthGap::Missing { method, variable } => write!(
            f,
            "agent `{name}` needs authentication with `{method}`, but {variable}, which its auth \
             names, is not set in the worker's environment: set it there"
        ),
        AuthGap::Refused { method, said } => write!(
            f,
            "agent `{name}` refused authentication with `{method}`: {said}"
        ),
        AuthGap::Rejected { method } => write!(
            f,
            "agent `{name}` still answers that authentication is required, with its auth \
             (`{method}`) configured: check the credentials it names"
        ),
    }
}

/// How to configure `auth` for agent `name`: with the first method it offers that takes a key,
/// else its gateway, else (no method a worker can use) the variables it reads.
fn configure(name: &str, program: Credentials, offers: &[AuthOffer]) -> String {
    let usable = || offers.iter().filter(|o| o.usable());
    let table = format!("[agents.{name}]");
    if let Some(key) = usable().find(|o| o.id != GATEWAY_METHOD) {
        let id = &key.id;
        return match program.key_variable() {
            Some(var) => format!(
                "set `auth = {{ method = \"{id}\", env = \"{var}\" }}` under {table} and name \
                 {var} in agent_env (CLAWDFORGE_AGENT_ENV)"
            ),
            None => format!(
                "set `auth = {{ method = \"{id}\", env = \"<VARIABLE>\" }}` under {table}, \
                 <VARIABLE> being the variable it reads its key from, and name that variable in \
                 agent_env (CLAWDFORGE_AGENT_ENV)"
            ),
        };
    }
    if usable().any(|o| o.id == GATEWAY_METHOD) {
        return format!(
            "set `auth = {{ method = \"{GATEWAY_METHOD}\", base_url = \"<URL>\", token_env = \
             \"<VARIABLE>\" }}` under {table}"
        );
    }
    program.hint().to_string()
}

/// How an acpx agent gets authenticated: acpx sends `authenticate` with the first method it
/// offers whose `ACPX_AUTH_<METHOD>` variable is set (and sets `<METHOD>` for the agent).
fn by_acpx(program: Credentials, offers: &[AuthOffer]) -> String {
    let Some(key) = offers.iter().find(|o| o.usable() && o.id != GATEWAY_METHOD) else {
        return program.hint().to_string();
    };
    let acpx_var = acpx_auth_variable(&key.id);
    let also = match program.key_variable() {
        Some(var) => format!(" (and {var}, which the agent reads its key from)"),
        None => String::new(),
    };
    format!(
        "acpx authenticates by itself with the first method whose ACPX_AUTH_<METHOD> variable is \
         set: set {acpx_var}{also} in the worker's environment and name it in agent_env \
         (CLAWDFORGE_AGENT_ENV)"
    )
}

/// The variable acpx reads the credential of `method` from: `ACPX_AUTH_` and the method id
/// upper-cased, each run of other characters than letters and digits made one `_`.
pub fn acpx_auth_variable(method: &str) -> String {
    let token: Vec<String> = method
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(str::to_ascii_uppercase)
        .collect();
    format!("ACPX_AUTH_{}", token.join("_"))
}

fn quoted(said: &Option<String>) -> String {
    match said {
        Some(line) => format!(": {line}"),
        None => " (nothing on its stderr)".into(),
    }
}

fn offered(offers: &[AuthOffer]) -> String {
    if offers.is_empty() {
        return "it offers no authentication method".into();
    }
    let list: Vec<String> = offers.iter().map(ToString::to_string).collect();
    format!("it offers {}", list.join(", "))
}

/// Where an agent's credentials come from, by the program that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credentials {
    Claude,
    Codex,
    Gemini,
    Other,
}

impl Credentials {
    fn of(program: &str) -> Credentials {
        let base = program.rsplit('/').next().unwrap_or(program);
        match base {
            "claude-agent-acp" | "claude-code-acp" | "claude" => Credentials::Claude,
            "codex-acp" | "codex" => Credentials::Codex,
            "gemini" => Credentials::Gemini,
            _ => Credentials::Other,
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Credentials::Claude => {
                "set ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN in the worker's environment and \
                 name it in agent_env (CLAWDFORGE_AGENT_ENV), or point agent_credentials_file at \
                 a Claude credentials file"
            }
            Credentials::Codex => {
                "it takes an API key only through `authenticate`: configure `auth` under its \
                 [agents.NAME] table (docs/agents.md: \"Agents and backends\")"
            }
            Credentials::Gemini => {
                "set GEMINI_API_KEY in the worker's environment and name it in agent_env \
                 (CLAWDFORGE_AGENT_ENV)"
            }
            Credentials::Other => {
                "set the variable it reads its credentials from in the worker's environment and \
                 name it in agent_env (CLAWDFORGE_AGENT_ENV)"
            }
        }
    }

    /// The variable its `authenticate` with a key reads the key from, when known.
    fn key_variable(self) -> Option<&'static str> {
        match self {
            Credentials::Codex => Some("OPENAI_API_KEY"),
            Credentials::Gemini => Some("GEMINI_API_KEY"),
            Credentials::Claude | Credentials::Other => None,
        }
    }
}

/// The line of a process's stderr that says what went wrong: the first that reads like an
/// error (error, panic, abort, denied, not found, …), else the last that is not noise. Noise:
/// blank and separator lines, stack frames (`at …`), version banners (`Bun v1.3.14 …`,
/// `Node.js v22.…`), the block of facts under Bun's crash banner (`CPU:`, `Args:`,
/// `Features:`, …), and the source excerpt Node prints before an uncaught error (a location
/// line, the source line, the caret). Clipped to a few hundred characters.
pub fn useful_line(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
    let noise = noise_lines(&lines);
    let candidates = || {
        lines
            .iter()
            .zip(&noise)
            .filter(|(_, noisy)| !**noisy)
            .map(|(line, _)| *line)
    };
    let line = candidates()
        .find(|l| reads_like_an_error(l))
        .or_else(|| candidates().next_back())?;
    Some(crate::error::clip(line, MAX_QUOTED))
}

/// Which of `lines` are noise (see [`useful_line`]).
fn noise_lines(lines: &[&str]) -> Vec<bool> {
    let mut noise: Vec<bool> = lines.iter().map(|l| noise_by_itself(l)).collect();
    let mut in_banner = false;
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).copied().unwrap_or_default();
        // Bun's crash banner: a separator, a version line, facts, then a blank line.
        if is_separator(line) && version_banner(next) {
            in_banner = true;
        } else if line.is_empty() {
            in_banner = false;
        }
        // Node's excerpt of the source: the line above a caret, and its location above it.
        let excerpt =
            is_caret(next) || (is_location(line) && lines.get(i + 2).is_some_and(|l| is_caret(l)));
        if in_banner || excerpt {
            noise[i] = true;
        }
    }
    noise
}

fn noise_by_itself(line: &str) -> bool {
    line.is_empty()
        || is_separator(line)
        || is_caret(line)
        || line.starts_with("at ")
        || version_banner(line)
        || is_location(line)
        || (line.starts_with("(node:") && line.contains("Warning"))
}

/// `=====`, `-----`, `*****` and the like.
fn is_separator(line: &str) -> bool {
    line.chars().count() >= 3 && line.chars().all(|c| "=-_*~#+─━".contains(c))
}

/// Node's caret under the failing source column, or a `~~~~` underline.
fn is_caret(line: &str) -> bool {
    !line.is_empty() && line.contains(['^', '~']) && line.chars().all(|c| "^~ ".contains(c))
}

/// `file:///x/agent.mjs:45`, `node:internal/modules/cjs/loader:1228`, `/x/y.js:3`.
fn is_location(line: &str) -> bool {
    let Some((path, number)) = line.rsplit_once(':') else {
        return false;
    };
    !line.contains(' ')
        && !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
        && (path.starts_with("file://") || path.starts_with("node:") || path.starts_with('/'))
}

/// A line that names a program and its version and nothing else that matters:
/// `Bun v1.3.14 (2a41ca97) Linux arm64`, `Node.js v22.12.0`.
fn version_banner(line: &str) -> bool {
    let versioned = line.split_whitespace().take(3).any(|word| {
        let mut chars = word.chars();
        chars.next() == Some('v') && chars.next().is_some_and(|c| c.is_ascii_digit())
    });
    versioned && !reads_like_an_error(line)
}

fn reads_like_an_error(line: &str) -> bool {
    const WORDS: [&str; 15] = [
        "error",
        "panic",
        "abort",
        "denied",
        "not found",
        "fatal",
        "failed",
        "cannot",
        "can't",
        "refused",
        "exception",
        "unable",
        "no such",
        "invalid",
        "segmentation fault",
    ];
    let lower = line.to_lowercase();
    WORDS.iter().any(|w| lower.contains(w))
}

#[cfg(test)]
mod tests;
