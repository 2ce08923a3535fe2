//! A throwaway PostgreSQL server per test process (or per test), with a fresh database
//! per test.
//!
//! Each server is the distribution's `initdb` + `postgres` in its own temp dir
//! (`acctor-pg-<pid>-<n>`), on a free port of 127.0.0.1, with trust authentication for
//! the superuser `acctor_test`. Durability is off (`fsync=off`): tests kill acctor,
//! never the server, and the data is thrown away. What outlives a test process that is
//! killed outright, the temp dir, is removed by the next process that starts a server;
//! the server process itself dies with it (see `pg_spawner`).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::pg_binaries::{find_bin_dir, os_user, pg_command, OsUser};
use super::pg_spawner::{shut_down, spawn_tied_to_process, POLL_INTERVAL};

/// The superuser `initdb` creates; every client connects as it.
const SUPERUSER: &str = "acctor_test";

/// How long a starting server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a fast shutdown may take before it becomes an immediate one.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many free ports to try: another process can take the port between our probe
/// and postgres's bind.
const PORT_ATTEMPTS: usize = 5;

/// How many lines of the server's log an error carries.
const LOG_TAIL_LINES: usize = 40;

/// Prefix of every server's temp dir, followed by `<pid>-<n>`.
const DIR_PREFIX: &str = "acctor-pg-";

/// Names each server's temp dir uniquely within the process.
static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Names each database uniquely within the process.
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// The process-wide server, once started.
static SHARED: OnceLock<PgServer> = OnceLock::new();

/// Serializes starting the shared server, so that tests asking at the same moment
/// wait for one server instead of each starting their own.
static SHARED_START: Mutex<()> = Mutex::new(());

/// Why the harness could not provide a server or run a command against it.
#[derive(Debug, thiserror::Error)]
pub enum PgHarnessError {
    /// No directory with `initdb` was found anywhere.
    #[error(
        "no PostgreSQL server binaries found (looked at $ACCTOR_PG_BIN, `pg_config --bindir`, \
         /usr/lib/postgresql/*/bin and initdb on PATH): run scripts/test, which installs them \
         (Debian package postgresql)"
    )]
    BinariesNotFound,
    /// `$ACCTOR_PG_BIN` is set to a directory without `initdb`.
    #[error(
        "ACCTOR_PG_BIN is {dir:?}, which has no initdb: point it at the PostgreSQL server \
         binaries, or unset it and run scripts/test, which installs them (Debian package postgresql)"
    )]
    PgBinInvalid {
        /// The directory it names.
        dir: PathBuf,
    },
    /// Running as root without a `postgres` OS user to drop to.
    #[error(
        "running as root, as which initdb and postgres refuse to run, and there is no `postgres` \
         OS user to run them as: run scripts/test, which installs the Debian package postgresql \
         (it creates that user), or run the tests as another user"
    )]
    NoPostgresUser,
    /// A file-system or process operation failed.
    #[error("could not {action}: {source}")]
    Io {
        /// What the harness was doing.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// One of the PostgreSQL programs (initdb, createdb, psql) exited with an error.
    #[error("{program} failed ({status}): {stderr}")]
    CommandFailed {
        /// The program and what it was asked to do.
        program: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The server exited while starting.
    #[error("postgres exited while starting ({status}); the end of its log:\n{log_tail}")]
    ServerExited {
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The server did not accept connections in time.
    #[error(
        "postgres did not accept connections within {timeout:?}; the end of its log:\n{log_tail}"
    )]
    NotReady {
        /// How long the harness waited.
        timeout: Duration,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The server's port was taken by someone else (on every attempt, for a new server;
    /// while it was stopped, for `resume`).
    #[error("port {port} is already in use, postgres could not listen on it; the end of its log:\n{log_tail}")]
    PortInUse {
        /// The last port tried.
        port: u16,
        /// The last lines of the server's log.
        log_tail: String,
    },
    /// `stop` was called on the process-wide server.
    #[error(
        "the shared server cannot be stopped: every test in the process uses it; \
         a test that stops the database starts its own with PgServer::start()"
    )]
    SharedServerStop,
    /// The thread that starts servers is gone (it only ends if it panicked).
    #[error("the pg-spawner thread is gone")]
    SpawnerGone,
}

impl PgHarnessError {
    fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }
}

/// A fresh database on a [`PgServer`], for one test.
///
/// Nothing drops it: it goes with its server (the shared one at process exit), which
/// keeps tests from tripping over a database another test still uses.
#[derive(Clone, Debug)]
pub struct TestDatabase {
    /// Its name, for [`PgServer::psql`].
    pub name: String,
    /// `postgres://acctor_test@127.0.0.1:<port>/<name>`, what the store connects to.
    pub url: String,
}

/// A running (or, between [`stop`](PgServer::stop) and [`resume`](PgServer::resume),
/// stopped) throwaway PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    bin_dir: PathBuf,
    /// The temp dir holding everything below; removed when the server goes.
    run_dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    user: Option<OsUser>,
    /// The postmaster, while it runs.
    postmaster: Mutex<Option<Child>>,
    /// The process-wide server, which tests must not stop.
    shared: bool,
    /// fsync on (benchmarks of durable writes); off for tests.
    durable: bool,
}

/// Why one attempt at starting the postmaster failed.
enum LaunchError {
    /// The port was taken: worth trying another.
    PortInUse {
        log_tail: String,
    },
    Other(PgHarnessError),
}

impl From<PgHarnessError> for LaunchError {
    fn from(error: PgHarnessError) -> Self {
        Self::Other(error)
    }
}

impl PgServer {
    /// The process-wide server: started on first use (initdb + postgres), shared by
    /// every test in the process, stopped when the process exits (even on SIGKILL of
    /// the test process: the postmaster has a parent-death signal). Each test takes its
    /// own database from it with [`create_database`](Self::create_database).
    pub fn shared() -> Result<&'static PgServer, PgHarnessError> {
        if let Some(server) = SHARED.get() {
            return Ok(server);
        }
        let _starting = SHARED_START.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(server) = SHARED.get() {
            return Ok(server);
        }
        let server = Self::launch(true, false)?;
        let server = SHARED.get_or_init(|| server);
        register_exit_cleanup();
        Ok(server)
    }

    /// A server of one's own (tests that stop and restart the database use this).
    /// Stopped, and its data dir removed, on drop.
    pub fn start() -> Result<PgServer, PgHarnessError> {
        Self::launch(false, false)
    }

    /// A server of one's own with PostgreSQL's durability on (`fsync`, full page
    /// writes), as a production server has it: for benchmarks of durable writes, whose
    /// figures mean nothing with fsync off.
    pub fn start_durable() -> Result<PgServer, PgHarnessError> {
        Self::launch(false, true)
    }

    /// Creates a fresh, uniquely named database and returns it. Safe to call from many
    /// threads at once.
    pub fn create_database(&self) -> Result<TestDatabase, PgHarnessError> {
        // The counter alone is unique within the process; the random part keeps names
        // from repeating across runs, should a server ever be reused.
        let name = format!(
            "t_{}_{:08x}",
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        self.client("createdb", &[&name])?;
        Ok(TestDatabase {
            url: self.url(&name),
            name,
        })
    }

    /// Stops the server (fast shutdown: connections are closed, the data is kept),
    /// keeping its data dir and port; [`resume`](Self::resume) starts it again on the
    /// same port and data. Stopping a stopped server does nothing. Refused on the
    /// [`shared`](Self::shared) server, which other tests are using.
    pub fn stop(&self) -> Result<(), PgHarnessError> {
        if self.shared {
            return Err(PgHarnessError::SharedServerStop);
        }
        let mut postmaster = self
            .postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = postmaster.take() {
            shut_down(&mut child, libc::SIGINT, STOP_TIMEOUT)
                .map_err(PgHarnessError::io("wait for postgres to stop"))?;
        }
        Ok(())
    }

    /// Starts a stopped server again, on the same port and data. Resuming a running
    /// server does nothing. Fails with [`PgHarnessError::PortInUse`] if another process
    /// took the port meanwhile.
    pub fn resume(&self) -> Result<(), PgHarnessError> {
        let mut postmaster = self
            .postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = postmaster.as_mut() {
            let exited = child
                .try_wait()
                .map_err(PgHarnessError::io("check on postgres"))?;
            if exited.is_none() {
                return Ok(());
            }
        }
        let child = self.launch_postmaster().map_err(|error| match error {
            LaunchError::PortInUse { log_tail } => PgHarnessError::PortInUse {
                port: self.port,
                log_tail,
            },
            LaunchError::Other(error) => error,
        })?;
        *postmaster = Some(child);
        Ok(())
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://acctor_test@127.0.0.1:<port>/<database>` (trust authentication: no
    /// password).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs one SQL command through psql as the superuser in `database` (to revoke a
    /// role's login, say, or read rows back) and returns psql's stdout: unaligned, tuples
    /// only (`-At`), quiet (no command tags), one row per line, columns separated by
    /// `|`, without the final newline. An SQL error is an error.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, PgHarnessError> {
        let out = self.client(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                database,
                "-c",
                sql,
            ],
        )?;
        Ok(out.strip_suffix('\n').unwrap_or(&out).to_owned())
    }

    /// Directory of the server binaries in use (pgbench lives there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// initdb into a new temp dir, then the postmaster on a free port.
    fn launch(shared: bool, durable: bool) -> Result<PgServer, PgHarnessError> {
        let bin_dir = find_bin_dir()?;
        let user = os_user()?;
        let run_dir = create_run_dir(user)?;
        let mut server = PgServer {
            bin_dir,
            data_dir: run_dir.join("data"),
            log_path: run_dir.join("postgres.log"),
            run_dir,
            port: 0,
            user,
            postmaster: Mutex::new(None),
            shared,
            durable,
        };
        // From here on, an error drops `server`, which removes the temp dir.
        server.initdb()?;
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.launch_postmaster() {
                Ok(child) => {
                    *server
                        .postmaster
                        .get_mut()
                        .unwrap_or_else(PoisonError::into_inner) = Some(child);
                    return Ok(server);
                }
                Err(LaunchError::PortInUse { log_tail }) => last_log = log_tail,
                Err(LaunchError::Other(error)) => return Err(error),
            }
        }
        Err(PgHarnessError::PortInUse {
            port: server.port,
            log_tail: last_log,
        })
    }

    fn initdb(&self) -> Result<(), PgHarnessError> {
        let output = pg_command(&self.bin_dir, "initdb", self.user, &self.run_dir)
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "--auth=trust",
                "-U",
                SUPERUSER,
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .map_err(PgHarnessError::io("run initdb"))?;
        if !output.status.success() {
            return Err(PgHarnessError::CommandFailed {
                program: format!("initdb -D {}", self.data_dir.display()),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// Starts postgres on `self.port` and waits until it accepts connections.
    fn launch_postmaster(&self) -> Result<Child, LaunchError> {
        // Appended to across restarts, so that a failure's log tail shows the history;
        // only what this start wrote is searched for a bind failure.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(PgHarnessError::io("open the postgres log"))?;
        let log_start = log
            .metadata()
            .map_err(PgHarnessError::io("read the postgres log"))?
            .len();
        let stderr = log
            .try_clone()
            .map_err(PgHarnessError::io("open the postgres log"))?;
        let mut command = pg_command(&self.bin_dir, "postgres", self.user, &self.run_dir);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("unix_socket_directories={}", self.run_dir.display()),
                "-c",
                if self.durable {
                    "fsync=on"
                } else {
                    "fsync=off"
                },
                "-c",
                if self.durable {
                    "full_page_writes=on"
                } else {
                    "full_page_writes=off"
                },
                "-c",
                "synchronous_commit=on",
                "-c",
                "max_connections=500",
                "-c",
                "shared_buffers=128MB",
            ])
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let mut child = spawn_tied_to_process(command)?;
        match self.wait_until_ready(&mut child, log_start) {
            Ok(()) => Ok(child),
            Err(error) => {
                // Best effort: the error being reported matters more than this one.
                let _ = shut_down(&mut child, libc::SIGQUIT, STOP_TIMEOUT);
                Err(error)
            }
        }
    }

    /// Waits for the postmaster to report itself ready in `postmaster.pid` (what
    /// `pg_ctl -w` waits for). Asking the port instead (pg_isready) could get an answer
    /// from another server that holds the port this one failed to bind.
    fn wait_until_ready(&self, child: &mut Child, log_start: u64) -> Result<(), LaunchError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let pid_file = self.data_dir.join("postmaster.pid");
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(PgHarnessError::io("check on postgres"))?
            {
                let this_start = read_log_from(&self.log_path, log_start);
                let log_tail = tail(&this_start);
                // With LC_ALL=C the message is in English.
                return Err(if this_start.contains("Address already in use") {
                    LaunchError::PortInUse { log_tail }
                } else {
                    PgHarnessError::ServerExited { status, log_tail }.into()
                });
            }
            if postmaster_ready(&pid_file, child.id()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PgHarnessError::NotReady {
                    timeout: READY_TIMEOUT,
                    log_tail: tail(&read_log_from(&self.log_path, 0)),
                }
                .into());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs a client program against the server as the superuser; its stdout.
    fn client(&self, program: &str, args: &[&str]) -> Result<String, PgHarnessError> {
        let output = pg_command(&self.bin_dir, program, self.user, &self.run_dir)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-w",
            ])
            .args(args)
            // A server that hangs fails the test instead of hanging it.
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .map_err(PgHarnessError::io(format!("run {program}")))?;
        if !output.status.success() {
            return Err(PgHarnessError::CommandFailed {
                program: format!("{program} {}", args.join(" ")),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops the postmaster (if any) and removes the temp dir; what drop and the
    /// shared server's exit hook both do.
    fn tear_down(&self, postmaster: Option<Child>, signal: libc::c_int) {
        if let Some(mut child) = postmaster {
            // Nothing to report to: a drop or process exit.
            let _ = shut_down(&mut child, signal, STOP_TIMEOUT);
        }
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let postmaster = self
            .postmaster
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.tear_down(postmaster, libc::SIGINT);
    }
}

/// Statics are never dropped, so the shared server's temp dir would stay behind after
/// every run (until the next run's stale-dir sweep); an exit hook removes it.
fn register_exit_cleanup() {
    extern "C" fn stop_shared_server() {
        let Some(server) = SHARED.get() else {
            return;
        };
        // try_lock: at exit, a thread stuck in resume() may hold the lock forever.
        let postmaster = match server.postmaster.try_lock() {
            Ok(mut postmaster) => postmaster.take(),
            Err(_) => return,
        };
        // Immediate shutdown: the data is about to be deleted, nothing to save.
        server.tear_down(postmaster, libc::SIGQUIT);
    }
    // SAFETY: the hook is a plain function that touches only statics, which outlive
    // it. Registration failing (out of slots) only leaves the temp dir behind.
    unsafe {
        libc::atexit(stop_shared_server);
    }
}

/// Creates `<tmp>/acctor-pg-<pid>-<n>` for a new server, owned by `user`.
fn create_run_dir(user: Option<OsUser>) -> Result<PathBuf, PgHarnessError> {
    static SWEEP: Once = Once::new();
    let tmp = std::env::temp_dir();
    // Before this process creates any dir of its own, so that any dir carrying its pid
    // is a leftover of an earlier process that had the same pid.
    SWEEP.call_once(|| remove_stale_run_dirs(&tmp));
    let pid = std::process::id();
    let run_dir = loop {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("{DIR_PREFIX}{pid}-{n}"));
        match fs::create_dir(&dir) {
            Ok(()) => break dir,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(PgHarnessError::io(format!("create {}", dir.display()))(
                    error,
                ))
            }
        }
    };
    if let Some(user) = user {
        std::os::unix::fs::chown(&run_dir, Some(user.uid), Some(user.gid)).map_err(
            PgHarnessError::io(format!("chown {} to postgres", run_dir.display())),
        )?;
    }
    Ok(run_dir)
}

/// Removes the temp dirs of test processes that no longer run (killed before they
/// could clean up). Best effort: a dir that cannot be removed costs only disk.
fn remove_stale_run_dirs(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || !process_exists(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 checks existence and permission without sending anything.
    let signalable = unsafe { libc::kill(pid, 0) } == 0
        // EPERM: it exists, as another user.
        || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    signalable && !is_zombie(pid)
}

/// A killed test process stays a zombie until its parent reaps it, which some init
/// processes (in containers) do late: it still answers kill(pid, 0), but it is dead.
fn is_zombie(pid: libc::pid_t) -> bool {
    // /proc/<pid>/stat is "<pid> (<comm>) <state> ...", and comm may contain spaces
    // or parentheses: the state follows the last ')'.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_comm) = stat.rsplit_once(')')?;
            after_comm.trim_start().chars().next()
        })
        == Some('Z')
}

/// A port that was free a moment ago. The listener is dropped before postgres binds, so
/// someone else may take it: the caller retries.
fn free_port() -> Result<u16, PgHarnessError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(PgHarnessError::io("find a free port"))
}

/// `postmaster.pid` line 1 is the postmaster's pid and line 8 its status; "ready" once
/// it accepts connections. The pid check skips a file left by an earlier run of the
/// same data dir.
fn postmaster_ready(pid_file: &Path, pid: u32) -> bool {
    let Ok(contents) = fs::read_to_string(pid_file) else {
        return false;
    };
    let lines: Vec<&str> = contents.lines().collect();
    lines.first().map(|line| line.trim()) == Some(pid.to_string().as_str())
        && lines.get(7).map(|line| line.trim()) == Some("ready")
}

/// The log from byte `start` on; empty if it cannot be read (the error being built
/// is worth more than this one).
fn read_log_from(path: &Path, start: u64) -> String {
    let mut bytes = Vec::new();
    let read = fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(start))?;
        file.read_to_end(&mut bytes)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
