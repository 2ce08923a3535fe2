//! Starting and stopping `postgres` processes so that none outlives the test process.
//!
//! A test process can die without running any destructor (SIGKILL, a timeout in CI, a
//! developer's Ctrl-\). Its servers must die with it, or every such run leaks a
//! postmaster holding a port and shared memory. Linux's `PR_SET_PDEATHSIG` asks the
//! kernel to signal the child when its parent dies, but "parent" means the *thread*
//! that forked it, and libtest runs each test on a thread that exits when the test ends.
//! So every postmaster is forked by one `pg-spawner` thread that lives as long as the
//! process.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::{mpsc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::postgres::PgHarnessError;

/// One postmaster to fork, and where to send the result.
struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// The spawner thread's inbox; `None` until the first server starts. The sender stays
/// here for the rest of the process, so the thread's loop never ends.
static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);

/// How often to look again at a process we wait for; only used to wait for another
/// process, which offers nothing to block on.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Spawns `command` from the long-lived spawner thread, with a parent-death signal.
pub(super) fn spawn_tied_to_process(mut command: Command) -> Result<Child, PgHarnessError> {
    let parent = std::process::id();
    // SAFETY: the hook only makes async-signal-safe system calls and allocates nothing
    // (an error built from an errno is not boxed), as required between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || die_with_parent(parent));
    }
    let inbox = spawner_inbox()?;
    let (reply, result) = mpsc::channel();
    inbox
        .send(SpawnRequest { command, reply })
        .map_err(|_| PgHarnessError::SpawnerGone)?;
    result
        .recv()
        .map_err(|_| PgHarnessError::SpawnerGone)?
        .map_err(|source| PgHarnessError::Io {
            action: "start postgres".to_owned(),
            source,
        })
}

fn spawner_inbox() -> Result<mpsc::Sender<SpawnRequest>, PgHarnessError> {
    // The lock only guards a few instructions; a panic elsewhere cannot leave the
    // Option half-written, so a poisoned lock is still good.
    let mut inbox = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(sender) = inbox.as_ref() {
        return Ok(sender.clone());
    }
    let (sender, requests) = mpsc::channel::<SpawnRequest>();
    thread::Builder::new()
        .name("pg-spawner".to_owned())
        .spawn(move || {
            for SpawnRequest { mut command, reply } in requests {
                // The requester may have given up (its test panicked): nothing to do.
                let _ = reply.send(command.spawn());
            }
        })
        .map_err(|source| PgHarnessError::Io {
            action: "start the pg-spawner thread".to_owned(),
            source,
        })?;
    *inbox = Some(sender.clone());
    Ok(sender)
}

/// Runs in the child between fork and exec. SIGQUIT is postgres's immediate shutdown:
/// the postmaster takes its backends down with it.
fn die_with_parent(parent: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // The argument is read as an unsigned long: pass one, not a variadic int whose
        // upper bits are unspecified.
        // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on the calling process.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT as libc::c_ulong) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // The parent may have died between fork and prctl, before there was anything to
    // signal us: then we have been re-parented and must not start at all.
    // SAFETY: getppid has no preconditions and cannot fail.
    if unsafe { libc::getppid() } as u32 != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Sends `signal` to `child` if it still runs. The child is not reaped yet, so its pid
/// cannot have been reused.
pub(super) fn signal(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions. ESRCH (it already exited) is
    // fine: the caller reaps it next.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Stops a postmaster with `signal` and reaps it, escalating to SIGQUIT (immediate
/// shutdown) if it is still up after `timeout`: a test must not hang on a server that
/// will not stop.
pub(super) fn shut_down(
    child: &mut Child,
    first_signal: libc::c_int,
    timeout: Duration,
) -> io::Result<ExitStatus> {
    signal(child, first_signal);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(POLL_INTERVAL);
    }
    signal(child, libc::SIGQUIT);
    child.wait()
}
