//! The ledger on one SQLite file, shared by several worker processes: WAL mode, a busy
//! timeout, and writes that must see a consistent count (the live-session cap, a turn's number)
//! run in `BEGIN IMMEDIATE` transactions, so that they serialise across processes.

mod apps;
mod owners;
mod recovery;
mod rows;
mod runs;
mod sessions;
mod tokens;
mod turns;
mod usage;
mod values;
mod waits;
mod workers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use rusqlite_migration::{Migrations, M};

use super::{LedgerError, LedgerResult};

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("migrations.sql")),
        // The backend's own state of a session, whichever backend it is.
        M::up("ALTER TABLE sessions RENAME COLUMN acpx_record_id TO agent_state;"),
        M::up(include_str!("live.sql")),
        M::up(include_str!("owners.sql")),
        M::up(include_str!("apps.sql")),
        M::up(include_str!("names.sql")),
    ])
}

/// The SQLite ledger; cheap to clone. Calls run on tokio's blocking pool.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
    /// A second connection for the quick indexed reads of the request path (token, session,
    /// counts). In WAL mode readers do not wait for writers, so these run inline on the caller's
    /// thread instead of hopping to the blocking pool; a read that does meet a lock (rare: WAL
    /// recovery, checkpoints) gives up quickly and is retried on the blocking pool.
    reader: Arc<Mutex<Connection>>,
    /// The file opened (device, inode): a file put in its place later is not the one in use.
    file_id: (u64, u64),
    path: PathBuf,
}

/// How long an inline read may wait for a lock before it moves to the blocking pool.
const INLINE_READ_BUSY: Duration = Duration::from_millis(50);

/// Refuses a file SQLite could open only for reading (its permissions, a read-only mount).
fn refuse_read_only(conn: &Connection, path: &Path) -> LedgerResult<()> {
    let read_only = conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    match (read_only, writable_by_me(path)) {
        (false, Ok(())) => Ok(()),
        (_, Err(e)) => Err(LedgerError::ReadOnly {
            reason: e.to_string(),
        }),
        (true, Ok(())) => Err(LedgerError::ReadOnly {
            reason: "SQLite opened it read-only".into(),
        }),
    }
}

fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether this process may write `path`, by its effective ids (access(2) with AT_EACCESS).
fn writable_by_me(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    let answer = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::W_OK,
            libc::AT_EACCESS,
        )
    };
    if answer == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> LedgerResult<Ledger> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let open_err = |source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        refuse_read_only(&conn, path)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        // Workers starting together race to switch the file to WAL (which SQLite answers with
        // "busy" without waiting) and to migrate: whoever loses tries again and finds the work
        // done.
        let migrations = migrations();
        let mut attempt = 0;
        loop {
            let step = conn
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(LedgerError::from)
                .and_then(|()| migrations.to_latest(&mut conn).map_err(LedgerError::from));
            match step {
                Ok(()) => break,
                Err(e) if attempt < 100 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "ledger set-up raced; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
        let reader = Connection::open(path).map_err(open_err)?;
        reader.busy_timeout(INLINE_READ_BUSY).map_err(open_err)?;
        reader
            .pragma_update(None, "query_only", true)
            .map_err(open_err)?;
        // A write lock is what every write needs: taking one proves the file and its -wal and
        // -shm companions can be written.
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|e| LedgerError::ReadOnly {
                reason: format!("no write lock: {e}"),
            })?;
        Ok(Ledger {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_path_buf(),
            file_id: file_id(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the ledger can still be written: the file at its path is still the one opened,
    /// and this process may write it. A restore that puts a read-only copy in its place, or a
    /// chmod, shows here before any write fails.
    pub fn check_writable(&self) -> Result<(), String> {
        match file_id(&self.path) {
            Ok(id) if id == self.file_id => {}
            Ok(_) => {
                return Err(format!(
                    "{} was replaced by another file; restart the worker to use it",
                    self.path.display()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        }
        writable_by_me(&self.path)
            .map_err(|e| format!("{} cannot be written: {e}", self.path.display()))
    }

    /// Runs `f` on the writer connection, on the blocking pool.
    pub(in crate::ledger) async fn call<T, F>(&self, f: F) -> LedgerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> LedgerResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| LedgerError::Task(e.to_string()))?
    }

    /// A quick read: inline on the reader connection, or on the blocking pool when the
    /// database is busy.
    async fn read<T, F>(&self, f: F) -> LedgerResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> LedgerResult<T> + Send + 'static,
    {
        let inline = {
            let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&reader)
        };
        match inline {
            Err(LedgerError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                self.call(move |c| f(c)).await
            }
            other => other,
        }
    }

    /// Runs `f` in one transaction, committed when it returns `Ok` (its writes are dropped when
    /// it fails).
    async fn write<T, F>(&self, f: F) -> LedgerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> LedgerResult<T> + Send + 'static,
    {
        self.call(move |c| {
            let tx = c.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}
