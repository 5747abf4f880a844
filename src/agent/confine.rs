//! What an agent process may reach: its app's own home, a clean environment, Landlock rules and
//! resource limits, all applied in the child between fork and exec, so that everything it
//! starts (acpx's queue owner, the agent, the agent's tools) inherits them.
//!
//! - **Home.** Each app's agents run with `HOME`, `CLAUDE_CONFIG_DIR` (`<home>/.claude`) and
//!   `TMPDIR` (`<home>/tmp`) under `agent_homes_dir/<app>`: acpx's records, Claude Code's
//!   transcripts and temporary files of one app are apart from another's.
//! - **Environment.** `PATH`, `HOME`, `LANG`, `TMPDIR`, `CLAUDE_CONFIG_DIR`, `NO_BROWSER=1` and
//!   the variables named in `agent_env`; nothing else of the worker's.
//! - **Landlock.** Write: the app's home, the work directory (a session's or a run's), and for
//!   sessions acpx's socket directory `/tmp/acpx-<hash of HOME>`; `/dev/null`. Read and
//!   execute: the configured system and tool directories, `/dev` and `/proc`. With ABI 4 and
//!   up, TCP connect only to `agent_connect_ports`; with ABI 6 and up, no abstract unix socket
//!   of a process outside the domain.
//! - **`/proc`.** Real agents need it (the Bun executable inside Claude Code's ACP adapter
//!   aborts at start without it). What guards the other processes' `environ`, `mem`, `fd/` and
//!   the like is the kernel's ptrace access check, which Landlock extends: a process in a
//!   Landlock domain may not inspect one outside it, nor one in a sibling domain (another
//!   app's agent, another session's acpx). That check lets `CAP_SYS_PTRACE` through, so an
//!   agent of a worker running as root starts with no capabilities at all (bounding,
//!   permitted, effective, inheritable and ambient sets emptied); root without capabilities
//!   is also refused the `environ` of a process holding more of them. The worker itself is
//!   not dumpable ([`hide_worker`]), which keeps its `/proc/<pid>` closed to processes of its
//!   user even where Landlock is off or missing. Command lines stay readable to all, so no
//!   prompt goes on an agent's argv.
//! - **Capabilities.** None, whatever the worker holds (see `/proc`), unless confinement is
//!   off.
//! - **Limits.** No core dumps; no file larger than `agent_max_file_bytes`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetError, Scope, ABI,
};
use nix::sys::resource::{setrlimit, Resource};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::agent::def::ConfinementMode;

/// What the operator configured.
#[derive(Debug, Clone)]
pub struct ConfineSettings {
    pub mode: ConfinementMode,
    pub homes: PathBuf,
    pub read_dirs: Vec<PathBuf>,
    pub connect_ports: Vec<u16>,
    pub env_names: Vec<String>,
    pub credentials_file: Option<PathBuf>,
    pub max_file_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(
        "agent_confinement is \"landlock\", but this kernel has no Landlock (it needs Linux 5.13 \
         or later with landlock in the lsm= list)"
    )]
    NoLandlock,
    #[error("agent_homes_dir {path}: {source}")]
    Homes {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How agent processes are started: unconfined (only for unit tests and the version probe), or
/// under an app's home, with Landlock when the kernel has it and the mode allows it.
#[derive(Debug, Clone)]
pub struct Confinement {
    policy: Option<Policy>,
    kernel_abi: Option<u32>,
}

#[derive(Debug, Clone)]
struct Policy {
    settings: ConfineSettings,
    /// The ABI rules are written for; `None`: no Landlock (mode off, or no kernel support).
    landlock: Option<ABI>,
}

/// Which kind of work a process does: sessions go through acpx, which needs its socket
/// directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Session,
    Run,
    /// A native agent process: it hosts sessions of its app, without acpx.
    Native,
}

/// Makes the calling process (a worker) not dumpable: its `/proc/<pid>` entries (`environ`,
/// `mem`, `fd/`, …) then belong to root and need `CAP_SYS_PTRACE`, so no process of its own
/// user can read them, confined or not. Its children are dumpable again once they exec.
pub fn hide_worker() -> std::io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)
}

/// The Landlock ABI of the running kernel; `None` when it has none.
pub fn kernel_abi() -> Option<u32> {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns the
    // ABI version (or an error); it touches no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    (v > 0).then_some(v as u32)
}

impl Confinement {
    /// No home, no rules: the process inherits the worker's environment.
    pub fn none() -> Confinement {
        Confinement {
            policy: None,
            kernel_abi: None,
        }
    }

    /// Checks the mode against the kernel and makes the homes' root.
    pub fn new(settings: ConfineSettings) -> Result<Confinement, ConfineError> {
        Self::on_kernel(settings, kernel_abi())
    }

    /// [`new`](Self::new) on a kernel whose Landlock ABI is `kernel`.
    fn on_kernel(
        mut settings: ConfineSettings,
        kernel: Option<u32>,
    ) -> Result<Confinement, ConfineError> {
        let landlock = match (settings.mode, kernel) {
            (ConfinementMode::Off, _) => None,
            (ConfinementMode::Landlock, None) => return Err(ConfineError::NoLandlock),
            (_, None) => None,
            (_, Some(v)) => Some(ABI::from(v as i32)),
        };
        let homes_error = |source| ConfineError::Homes {
            path: settings.homes.clone(),
            source,
        };
        std::fs::create_dir_all(&settings.homes).map_err(homes_error)?;
        settings.homes = std::fs::canonicalize(&settings.homes).map_err(homes_error)?;
        // Linked into every home: a relative path would be read from the link's directory.
        settings.credentials_file = settings
            .credentials_file
            .map(|file| std::path::absolute(&file).unwrap_or(file));
        Ok(Confinement {
            policy: Some(Policy { settings, landlock }),
            kernel_abi: kernel,
        })
    }

    /// Whether agent processes run under Landlock.
    pub fn confined(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| p.landlock.is_some())
    }

    /// The kernel's Landlock ABI, whatever the mode.
    pub fn abi(&self) -> Option<u32> {
        self.kernel_abi
    }

    /// The home of `app`'s agents, when agents get homes.
    pub fn home(&self, app: &str) -> Option<PathBuf> {
        let p = self.policy.as_ref()?;
        Some(p.settings.homes.join(app_dir_name(app)))
    }

    /// Prepares `app`'s home and what a process working in `work_dir` may reach; `None` when
    /// processes are not confined at all.
    pub fn jail(&self, app: &str, work_dir: &Path, work: Work) -> std::io::Result<Option<Jail>> {
        let Some(p) = &self.policy else {
            return Ok(None);
        };
        let home = p.settings.homes.join(app_dir_name(app));
        let mut write = prepare_home(&home, p.settings.credentials_file.as_deref())?;
        write.push(work_dir.to_path_buf());
        if work == Work::Session {
            write.push(acpx_socket_dir(&home)?);
        }
        let mut read = p.settings.read_dirs.clone();
        // /proc: see the module's documentation.
        read.extend(["/dev", "/proc"].map(PathBuf::from));
        read.extend(p.settings.credentials_file.clone());
        let mut env = environment(&home, &p.settings.env_names);
        if p.landlock.is_some() {
            // Claude Code refuses to skip its permission prompts as root unless it is told it
            // runs in a sandbox, which a confined agent does.
            env.push(("IS_SANDBOX".into(), "1".into()));
        }
        Ok(Some(Jail {
            env,
            drop_capabilities: p.settings.mode != ConfinementMode::Off,
            rules: p.landlock.map(|abi| Rules {
                abi,
                read,
                write,
                ports: p.settings.connect_ports.clone(),
            }),
            max_file_bytes: p.settings.max_file_bytes,
        }))
    }
}

/// An app's home directory name: the app's name (letters, digits, '-', '_', '.'), with "." and
/// ".." spelled so that they stay inside the homes' root.
pub fn app_dir_name(app: &str) -> String {
    match app {
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        other => other.into(),
    }
}

/// Makes `home`, its `tmp` and `.claude` (mode 700), with the operator's credentials file
/// linked in; returns the directories a process may write.
fn prepare_home(home: &Path, credentials: Option<&Path>) -> std::io::Result<Vec<PathBuf>> {
    let claude = home.join(".claude");
    for dir in [home.to_path_buf(), home.join("tmp"), claude.clone()] {
        private_dir(&dir)?;
    }
    if let Some(file) = credentials {
        let link = claude.join(".credentials.json");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(file, &link)?;
        }
    }
    Ok(vec![home.to_path_buf()])
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// acpx 0.19 keeps its queue owners' sockets in `/tmp/acpx-<first 10 hex digits of
/// sha256(HOME)>` whatever `TMPDIR` says; it is made here so that only it, not `/tmp`, needs
/// to be writable.
fn acpx_socket_dir(home: &Path) -> std::io::Result<PathBuf> {
    let dir = acpx_socket_dir_of(home);
    private_dir(&dir)?;
    Ok(dir)
}

/// Where acpx 0.19 keeps the sockets of the agents whose HOME is `home`.
pub fn acpx_socket_dir_of(home: &Path) -> PathBuf {
    let hash = hex::encode(Sha256::digest(home.as_os_str().as_encoded_bytes()));
    PathBuf::from(format!("/tmp/acpx-{}", &hash[..10]))
}

/// The clean environment of an agent process.
fn environment(home: &Path, names: &[String]) -> Vec<(OsString, OsString)> {
    let inherited = |name: &str| std::env::var_os(name);
    let mut env: Vec<(OsString, OsString)> = vec![
        (
            "PATH".into(),
            inherited("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        (
            "LANG".into(),
            inherited("LANG").unwrap_or_else(|| "C.UTF-8".into()),
        ),
        ("HOME".into(), home.into()),
        ("TMPDIR".into(), home.join("tmp").into()),
        ("CLAUDE_CONFIG_DIR".into(), home.join(".claude").into()),
        // No agent of a worker has a browser or a person at a terminal: agents that can log in
        // through one (codex-acp, Claude Code's adapter) then do not offer it.
        ("NO_BROWSER".into(), "1".into()),
    ];
    for name in names {
        // HOME and the rest are the jail's own, whatever agent_env says.
        let taken = env.iter().any(|(k, _)| k == name.as_str());
        if let (false, Some(value)) = (taken, inherited(name)) {
            env.push((name.into(), value));
        }
    }
    env
}

/// What one process gets: its environment, its Landlock rules and its limits.
#[derive(Debug, Clone)]
pub struct Jail {
    env: Vec<(OsString, OsString)>,
    /// Whether the process starts with no capabilities (confinement not off).
    drop_capabilities: bool,
    rules: Option<Rules>,
    max_file_bytes: u64,
}

#[derive(Debug, Clone)]
struct Rules {
    abi: ABI,
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
    ports: Vec<u16>,
}

impl Rules {
    /// The ruleset, made in the parent: between fork and exec only `restrict_self` runs.
    fn create(&self) -> Result<RulesetCreated, RulesetError> {
        let abi = self.abi;
        let read = AccessFs::from_read(abi);
        let all = AccessFs::from_all(abi);
        let mut ruleset = Ruleset::default().handle_access(all)?;
        if abi >= ABI::V4 {
            ruleset = ruleset.handle_access(AccessNet::ConnectTcp)?;
        }
        if abi >= ABI::V6 {
            // No abstract unix sockets of processes outside the domain. Signals stay open:
            // every acpx command runs in a domain of its own, and checks its queue owner with
            // kill(pid, 0).
            ruleset = ruleset.scope(Scope::AbstractUnixSocket)?;
        }
        let mut created = ruleset.create()?;
        for (dirs, access) in [(&self.read, read), (&self.write, all)] {
            for dir in dirs {
                // A directory that does not exist on this host has nothing to allow.
                if let Ok(fd) = PathFd::new(dir) {
                    created = created.add_rule(PathBeneath::new(fd, access))?;
                }
            }
        }
        if let Ok(fd) = PathFd::new("/dev/null") {
            created = created.add_rule(PathBeneath::new(fd, AccessFs::from_file(abi)))?;
        }
        if abi >= ABI::V4 {
            for port in &self.ports {
                created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
            }
        }
        Ok(created)
    }
}

/// The PATH a process started in `jail` looks programs up on (without a jail: the worker's).
pub fn search_path(jail: Option<&Jail>) -> OsString {
    let jailed = jail.and_then(|j| j.env.iter().find(|(name, _)| name == "PATH"));
    match jailed {
        Some((_, path)) => path.clone(),
        None => std::env::var_os("PATH").unwrap_or_default(),
    }
}

impl Jail {
    /// Gives `cmd` the jail's environment, and, in the child before exec, its limits and rules.
    pub(super) fn apply(&self, cmd: &mut Command) -> std::io::Result<()> {
        cmd.env_clear().envs(self.env.iter().cloned());
        let mut ruleset = match &self.rules {
            Some(rules) => Some(rules.create().map_err(std::io::Error::other)?),
            None => None,
        };
        let max_file = self.max_file_bytes;
        let drop_capabilities = self.drop_capabilities;
        // SAFETY: the closure runs in the forked child; it only makes system calls (setrlimit,
        // prctl, landlock_restrict_self, capset) and allocates nothing on success (a nix error
        // converts to an io::Error by its errno).
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
                setrlimit(Resource::RLIMIT_FSIZE, max_file, max_file)?;
                if let Some(ruleset) = ruleset.take() {
                    ruleset
                        .restrict_self()
                        .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
                }
                if drop_capabilities {
                    drop_all_capabilities()?;
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// Empties every capability set of the calling process, for good. `no_new_privs` keeps exec
/// of a root-owned program from granting any back (the kernel then caps what exec gives at what
/// the process held); the bounding set goes too where the process may drop it (`CAP_SETPCAP`).
/// A process without capabilities (a worker not run as root) has nothing to lose and gets no
/// error. Runs between fork and exec: system calls only.
fn drop_all_capabilities() -> std::io::Result<()> {
    const LAST_CAP_BOUND: libc::c_ulong = 63;
    // SAFETY: prctl and capset with plain integers and a stack buffer; no memory is shared.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for cap in 0..=LAST_CAP_BOUND {
            // EINVAL past the kernel's last capability, EPERM without CAP_SETPCAP: both leave
            // nothing exec could grant, given no_new_privs.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: ConfinementMode, homes: &Path) -> ConfineSettings {
        ConfineSettings {
            mode,
            homes: homes.to_path_buf(),
            read_dirs: vec![],
            connect_ports: vec![443],
            env_names: vec![],
            credentials_file: None,
            max_file_bytes: 1 << 20,
        }
    }

    #[test]
    fn the_mode_decides_with_the_kernel() {
        use ConfinementMode::*;
        let dir = tempfile::tempdir().unwrap();
        let on = |mode, kernel| Confinement::on_kernel(settings(mode, dir.path()), kernel);
        assert!(matches!(on(Landlock, None), Err(ConfineError::NoLandlock)));
        let auto_without = on(Auto, None).unwrap();
        assert!(!auto_without.confined() && auto_without.abi().is_none());
        assert!(on(Auto, Some(7)).unwrap().confined());
        assert!(on(Landlock, Some(1)).unwrap().confined());
        let off = on(Off, Some(7)).unwrap();
        assert!(!off.confined() && off.abi() == Some(7));
        // Off still gives each app its home.
        let jail = off.jail("notes", dir.path(), Work::Run).unwrap().unwrap();
        assert!(jail.rules.is_none());
        assert!(dir.path().join("notes/.claude").is_dir() && dir.path().join("notes/tmp").is_dir());
    }

    #[test]
    fn dot_apps_stay_inside_the_homes_root() {
        assert_eq!(app_dir_name("notes"), "notes");
        assert_eq!(app_dir_name(".."), "%2E%2E");
        assert_eq!(app_dir_name("."), "%2E");
    }

    #[test]
    fn the_environment_is_the_home_the_basics_and_the_listed_names_only() {
        let listed = ["HOME".into(), "UNSET_X_42".into()];
        let env = environment(Path::new("/h/notes"), &listed);
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "LANG",
                "HOME",
                "TMPDIR",
                "CLAUDE_CONFIG_DIR",
                "NO_BROWSER"
            ]
        );
        let value = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(value("HOME"), Some("/h/notes".into()));
        assert_eq!(value("TMPDIR"), Some("/h/notes/tmp".into()));
        assert_eq!(value("CLAUDE_CONFIG_DIR"), Some("/h/notes/.claude".into()));
    }

    #[test]
    fn the_socket_dir_is_the_one_acpx_computes() {
        // acpx: path.join("/tmp", `acpx-${sha256(homeDir).hex.slice(0, 10)}`); for "/home/x",
        // `printf /home/x | sha256sum` begins c0bd14e65e.
        let dir = acpx_socket_dir_of(Path::new("/home/x"));
        assert_eq!(dir, Path::new("/tmp/acpx-c0bd14e65e"));
    }
}
