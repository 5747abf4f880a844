//! Child processes as the agent runners start them: argv only, their own process group (so a
//! timeout kills their children too, and a Ctrl-C at the worker's terminal does not reach
//! them), killed on drop, output read within bounds.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

/// A command with the project's spawning rules applied.
pub fn command<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Starts `cmd`. A program that is open for writing somewhere (being installed or replaced, or
/// just written by a process that forked meanwhile) fails with "text file busy" for a moment:
/// that is tried again a few times.
pub async fn spawn(cmd: &mut Command) -> std::io::Result<tokio::process::Child> {
    let mut waits = [10u64, 20, 40, 80, 160, 320].into_iter();
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => match waits.next() {
                Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// Kills a child's whole process group.
pub fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
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
pub async fn read_tail<R: tokio::io::AsyncRead + Unpin>(mut r: R, cap: usize) -> String {
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
pub async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    limit: usize,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut over = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.len() + n > limit {
                    over = true;
                } else {
                    out.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    (!over).then_some(out)
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

    #[tokio::test]
    async fn kill_group_takes_the_children_too() {
        let mut cmd = command("sh", ["-c", "sleep 30 & echo $!; wait"]);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let grandchild: i32 = lines.next_line().await.unwrap().unwrap().parse().unwrap();
        kill_group(child.id());
        child.wait().await.unwrap();
        // The grandchild is gone too (reaped by init, so it may linger as a zombie briefly).
        let mut gone = false;
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat"));
            if stat.map(|s| s.contains(") Z")).unwrap_or(true) {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            gone,
            "grandchild {grandchild} survived its group being killed"
        );
    }
}
