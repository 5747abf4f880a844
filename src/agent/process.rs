//! Child processes as the agent runners start them: argv only, their own process group (so a
//! timeout kills their children too, and a Ctrl-C at the worker's terminal does not reach
//! them), killed on drop, output read within bounds.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::mpsc;

use super::confine::Jail;

/// Time allowed, after a process group is killed, for it to be reaped and its pipes to close.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a process's output pipes may stay open after it exits (held by a process it left in
/// the background) before its process group is killed.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// A command with the project's spawning rules applied.
fn command(program: &str, args: &[String], cwd: Option<&Path>, piped_stdin: bool) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if piped_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd
}

/// Starts `cmd`. A program that is open for writing somewhere (being installed or replaced, or
/// just written by a process that forked meanwhile) fails with "text file busy" for a moment:
/// that is tried again a few times.
async fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let mut waits = [10u64, 20, 40, 80, 160, 320].into_iter();
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => match waits.next() {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// Kills a child's whole process group.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// What to start: a program, its argv, where, and what it reads on stdin.
#[derive(Debug, Clone, Default)]
pub struct Spec<'a> {
    pub program: &'a str,
    pub args: &'a [String],
    pub cwd: Option<&'a Path>,
    /// Written to the process's stdin, which is then closed; `None`: stdin is /dev/null (unless
    /// `keep_stdin`).
    pub stdin: Option<Vec<u8>>,
    /// stdin is a pipe left open for [`Spawned::take_stdin`] (a process spoken to over stdio).
    pub keep_stdin: bool,
    /// The app's home, environment, Landlock rules and limits; `None`: the worker's own.
    pub jail: Option<&'a Jail>,
}

/// A started process in a process group of its own. The group is killed when this is dropped
/// (a timeout, a caller that gave up, a worker shutting down) unless the leader has exited and
/// been reaped: then the group id may already name someone else's group. A group's id stays
/// taken while any member lives, so a group with members left is still ours.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    pid: Option<u32>,
    reaped: bool,
    feed: Option<tokio::task::JoinHandle<()>>,
}

/// How a collected process ended.
#[derive(Debug)]
pub enum Ended {
    Exited(Collected),
    /// Killed (with its group) at the timeout; the tail of what it wrote to stderr.
    TimedOut {
        stderr: String,
    },
}

/// What a process that exited wrote.
#[derive(Debug)]
pub struct Collected {
    pub status: ExitStatus,
    /// `None` when it wrote more than the limit.
    pub stdout: Option<Vec<u8>>,
    /// The tail of stderr.
    pub stderr: String,
}

impl Spawned {
    pub async fn start(spec: Spec<'_>) -> std::io::Result<Spawned> {
        let piped = spec.stdin.is_some() || spec.keep_stdin;
        let mut cmd = command(spec.program, spec.args, spec.cwd, piped);
        if let Some(jail) = spec.jail {
            jail.apply(&mut cmd)?;
        }
        let mut child = spawn(&mut cmd).await?;
        let stdin = if spec.keep_stdin {
            None
        } else {
            child.stdin.take()
        };
        let feed = match (stdin, spec.stdin) {
            (Some(mut stdin), Some(bytes)) => Some(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                // The process may exit without reading it all; its exit status tells the story.
                let _ = stdin.write_all(&bytes).await;
                let _ = stdin.shutdown().await;
            })),
            _ => None,
        };
        Ok(Spawned {
            pid: child.id(),
            child,
            reaped: false,
            feed,
        })
    }

    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// The leader's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.pid
    }

    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child
            .stdout
            .take()
            .expect("stdout is piped and taken once")
    }

    pub fn take_stderr(&mut self) -> ChildStderr {
        self.child
            .stderr
            .take()
            .expect("stderr is piped and taken once")
    }

    /// Kills the process and its whole group.
    pub fn kill(&self) {
        if !self.reaped {
            kill_group(self.pid);
        }
    }

    /// Waits for the leader to exit, for at most `limit`.
    pub async fn wait(&mut self, limit: Duration) -> Option<std::io::Result<ExitStatus>> {
        let status = tokio::time::timeout(limit, self.child.wait()).await.ok()?;
        self.reaped = status.is_ok();
        Some(status)
    }

    /// Waits for the leader to exit, however long it takes; whatever it left running in its
    /// group is killed with it.
    pub async fn exit(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await;
        if status.is_ok() {
            kill_group(self.pid);
            self.reaped = true;
        }
        status
    }

    /// Lets the process end on its own, for at most `limit`, without anyone waiting for it;
    /// past that it is killed.
    pub fn finish_in_background(mut self, limit: Duration) {
        tokio::spawn(async move {
            let _ = self.wait(limit).await;
        });
    }

    /// Waits for the process to exit, with its stdout (up to `stdout_limit` bytes) and the tail
    /// of its stderr. Past `timeout` the group is killed. Once the leader has exited, its pipes
    /// get `PIPE_GRACE` to close, what the leader wrote is kept, and whatever it left running
    /// in its group is killed.
    pub async fn collect(
        self,
        stdout_limit: usize,
        stderr_tail: usize,
        timeout: Duration,
    ) -> std::io::Result<Ended> {
        self.collect_tapped(stdout_limit, stderr_tail, timeout, None)
            .await
    }

    /// [`collect`](Self::collect), with each line of stdout also sent to `tap` as soon as it is
    /// read (a line is at most `stdout_limit` bytes; a longer one is not sent).
    pub async fn collect_tapped(
        mut self,
        stdout_limit: usize,
        stderr_tail: usize,
        timeout: Duration,
        tap: Option<mpsc::Sender<Vec<u8>>>,
    ) -> std::io::Result<Ended> {
        let mut out = tokio::spawn(read_bounded(self.take_stdout(), stdout_limit, tap));
        let mut err = tokio::spawn(read_tail(self.take_stderr(), stderr_tail));
        let pid = self.pid;
        let finished = tokio::time::timeout(timeout, async {
            let status = self.child.wait().await;
            let drained = async { ((&mut out).await.unwrap_or(None), (&mut err).await) };
            let kill_leftovers = async {
                tokio::time::sleep(PIPE_GRACE).await;
                kill_group(pid);
                std::future::pending::<std::convert::Infallible>().await
            };
            let (stdout, stderr) = tokio::select! {
                drained = drained => drained,
                never = kill_leftovers => match never {},
            };
            (status, stdout, stderr.unwrap_or_default())
        })
        .await;
        if let Some(feed) = self.feed.take() {
            feed.abort();
        }
        match finished {
            Ok((status, stdout, stderr)) => {
                // Whatever it left running in the background goes with it.
                kill_group(pid);
                self.reaped = true;
                Ok(Ended::Exited(Collected {
                    status: status?,
                    stdout,
                    stderr,
                }))
            }
            Err(_) => {
                self.kill();
                let _ = self.wait(REAP_TIMEOUT).await;
                out.abort();
                let stderr = tokio::time::timeout(REAP_TIMEOUT, err)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                Ok(Ended::TimedOut { stderr })
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(feed) = self.feed.take() {
            feed.abort();
        }
        self.kill();
    }
}

/// How a process ended, for messages: "code N" or "a signal".
pub fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("code {c}"),
        None => "a signal".into(),
    }
}

/// The last line of `s` that is not blank, trimmed.
pub fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// Where `program` is found when it is started in `cwd` with `search_path` as PATH, as exec
/// finds it: a name with a '/' as it is (relative to `cwd`), a bare name in the first
/// directory of PATH holding an executable file of that name.
pub fn which(program: &str, search_path: &OsStr, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = cwd.join(program);
        return executable(&path).then_some(path);
    }
    std::env::split_paths(search_path)
        .map(|dir| cwd.join(dir).join(program))
        .find(|p| executable(p))
}

/// The last `cap` bytes of a stream, for error messages and the ledger.
#[derive(Debug)]
pub struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Tail {
    pub fn new(cap: usize) -> Tail {
        Tail {
            buf: VecDeque::with_capacity(cap.min(4096)),
            cap,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.cap {
            &bytes[bytes.len() - self.cap..]
        } else {
            bytes
        };
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(bytes);
    }

    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).trim().to_string()
    }
}

/// Reads a stream to its end, keeping only its tail.
pub(super) async fn read_tail<R: tokio::io::AsyncRead + Unpin>(mut r: R, cap: usize) -> String {
    use tokio::io::AsyncReadExt;
    let mut tail = Tail::new(cap);
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => tail.push(&buf[..n]),
        }
    }
    tail.text()
}

/// Reads a stream to its end, up to `limit` bytes; `None` when it was longer.
async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    limit: usize,
    tap: Option<mpsc::Sender<Vec<u8>>>,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut line = Lines::new(limit, tap);
    let mut buf = [0u8; 8192];
    let mut over = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                line.push(&buf[..n]).await;
                if out.len() + n > limit {
                    over = true;
                } else {
                    out.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    line.finish().await;
    (!over).then_some(out)
}

/// Cuts a byte stream into lines for a tap.
struct Lines {
    partial: Vec<u8>,
    too_long: bool,
    limit: usize,
    tap: Option<mpsc::Sender<Vec<u8>>>,
}

impl Lines {
    fn new(limit: usize, tap: Option<mpsc::Sender<Vec<u8>>>) -> Lines {
        Lines {
            partial: Vec::new(),
            too_long: false,
            limit,
            tap,
        }
    }

    async fn push(&mut self, mut bytes: &[u8]) {
        let Some(tap) = self.tap.clone() else {
            return;
        };
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.extend(&bytes[..end]);
            let line = std::mem::take(&mut self.partial);
            if !std::mem::replace(&mut self.too_long, false) {
                let _ = tap.send(line).await;
            }
            bytes = &bytes[end + 1..];
        }
        self.extend(bytes);
    }

    fn extend(&mut self, bytes: &[u8]) {
        if self.partial.len() + bytes.len() > self.limit {
            self.too_long = true;
            self.partial.clear();
        } else if !self.too_long {
            self.partial.extend_from_slice(bytes);
        }
    }

    async fn finish(&mut self) {
        if let Some(tap) = &self.tap {
            if !self.partial.is_empty() && !self.too_long {
                let _ = tap.send(std::mem::take(&mut self.partial)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(5);
        t.push(b"abc");
        t.push(b"defg");
        assert_eq!(t.text(), "cdefg");
        t.push(b"0123456789");
        assert_eq!(t.text(), "56789");
    }

    #[test]
    fn which_finds_an_executable_as_exec_does() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("tool", 0o755), ("plain", 0o644)] {
            let file = dir.path().join(name);
            std::fs::write(&file, "").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        let root = Path::new("/");
        assert_eq!(which("tool", &path, root), Some(dir.path().join("tool")));
        assert_eq!(which("plain", &path, root), None, "not executable");
        assert_eq!(which("tool", OsStr::new("/usr/bin"), root), None);
        assert_eq!(
            which("./tool", OsStr::new(""), dir.path()),
            Some(dir.path().join("./tool")),
            "a name with a '/' is not looked up on PATH"
        );
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    async fn gone(pid: i32) -> bool {
        // Reaped by init, so it may linger as a zombie briefly.
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            if stat.map(|s| s.contains(") Z")).unwrap_or(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn dropping_a_running_process_kills_its_whole_group() {
        let args = sh("sleep 30 & echo $!; wait");
        let mut p = Spawned::start(Spec {
            program: "sh",
            args: &args,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut lines =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(p.take_stdout()));
        let grandchild: i32 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
        assert!(
            std::fs::metadata(format!("/proc/{grandchild}")).is_ok(),
            "the grandchild runs before the drop"
        );
        drop(p);
        assert!(
            gone(grandchild).await,
            "grandchild {grandchild} survived its group being killed"
        );
    }

    #[tokio::test]
    async fn collect_bounds_stdout_and_kills_the_group_at_the_timeout() {
        let args = sh("head -c 5000 /dev/zero; echo oops >&2");
        let long = Spawned::start(Spec {
            program: "sh",
            args: &args,
            ..Default::default()
        })
        .await
        .unwrap();
        match long
            .collect(4096, 100, Duration::from_secs(30))
            .await
            .unwrap()
        {
            Ended::Exited(c) => {
                assert!(c.status.success());
                assert_eq!(c.stdout, None, "5000 bytes are over a limit of 4096");
                assert_eq!(c.stderr, "oops");
            }
            other => panic!("{other:?}"),
        }
        let args = sh("sleep 30 & echo $! >&2; wait");
        let hung = Spawned::start(Spec {
            program: "sh",
            args: &args,
            ..Default::default()
        })
        .await
        .unwrap();
        match hung
            .collect(4096, 100, Duration::from_millis(300))
            .await
            .unwrap()
        {
            Ended::TimedOut { stderr } => {
                let grandchild: i32 = stderr.trim().parse().unwrap();
                assert!(gone(grandchild).await, "the timeout killed the whole group");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_tap_gets_each_line_as_it_is_written() {
        // The second line is written only once the first has come through the tap.
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        let script = format!(
            "echo one; while [ ! -e {0} ]; do sleep 0.01; done; printf 'two\\nthree'",
            go.display()
        );
        let args = sh(&script);
        let p = Spawned::start(Spec {
            program: "sh",
            args: &args,
            ..Default::default()
        })
        .await
        .unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let run = tokio::spawn(p.collect_tapped(100, 100, Duration::from_secs(30), Some(tx)));
        assert_eq!(rx.recv().await.unwrap(), b"one");
        std::fs::write(&go, "").unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"two");
        assert_eq!(rx.recv().await.unwrap(), b"three");
        match run.await.unwrap().unwrap() {
            Ended::Exited(c) => assert_eq!(c.stdout.as_deref(), Some(&b"one\ntwo\nthree"[..])),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn stdin_is_fed_and_closed() {
        let args = sh("cat");
        let p = Spawned::start(Spec {
            program: "sh",
            args: &args,
            stdin: Some(b"fed".to_vec()),
            ..Default::default()
        })
        .await
        .unwrap();
        match p.collect(100, 100, Duration::from_secs(30)).await.unwrap() {
            Ended::Exited(c) => assert_eq!(c.stdout.as_deref(), Some(&b"fed"[..])),
            other => panic!("{other:?}"),
        }
    }
}
