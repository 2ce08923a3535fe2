//! Where the PostgreSQL binaries are, and which OS user runs them.
//!
//! The lookup order is the one `scripts/test` uses to decide whether to install the
//! Debian package, so that a machine the script considers ready is one the harness
//! finds binaries on.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::postgres::PgHarnessError;

/// Environment variable naming the directory of the server binaries, overriding the
/// search.
const PG_BIN_VAR: &str = "ACCTOR_PG_BIN";

/// Where Debian installs each major version's server binaries (`<version>/bin`).
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// The directory holding `initdb`, `postgres`, `psql`, `createdb` (and `pgbench`):
/// `$ACCTOR_PG_BIN` if set, else `pg_config --bindir` if it has `initdb`, else the
/// highest `/usr/lib/postgresql/*/bin`, else the directory `initdb` on `PATH` really
/// lives in.
pub(super) fn find_bin_dir() -> Result<PathBuf, PgHarnessError> {
    if let Some(dir) = std::env::var_os(PG_BIN_VAR) {
        // Set on purpose: silently searching elsewhere would test against binaries the
        // user did not ask for.
        let dir = PathBuf::from(dir);
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            Err(PgHarnessError::PgBinInvalid { dir })
        };
    }
    pg_config_bindir()
        .or_else(highest_debian_bindir)
        .or_else(initdb_on_path)
        .ok_or(PgHarnessError::BinariesNotFound)
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file()
}

/// `pg_config` may come from the client-only development package, whose `--bindir`
/// has no server binaries: only trusted when `initdb` is there.
fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    has_initdb(&dir).then_some(dir)
}

/// Several major versions can be installed side by side; the newest is what a fresh
/// install of the `postgresql` package would give.
fn highest_debian_bindir() -> Option<PathBuf> {
    std::fs::read_dir(DEBIAN_PG_ROOT)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = parse_version(&entry.file_name())?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// `15` → `[15]`, `9.6` → `[9, 6]`; compared numerically so that 10 beats 9.6.
fn parse_version(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?
        .split('.')
        .map(|part| part.parse().ok())
        .collect()
}

/// `initdb` on `PATH` is often a symlink (`/usr/local/bin/initdb` here): the other
/// binaries are next to its target, not next to the link.
fn initdb_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("initdb"))
        .find(|initdb| initdb.is_file())
        .and_then(|initdb| std::fs::canonicalize(initdb).ok())
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
}

/// The OS user the PostgreSQL binaries run as, when it is not the current one.
#[derive(Clone, Copy, Debug)]
pub(super) struct OsUser {
    /// Its user id.
    pub(super) uid: u32,
    /// Its primary group id.
    pub(super) gid: u32,
}

/// `None` when not root: the binaries run as ourselves. As root, `initdb` and
/// `postgres` refuse to run at all, so they (and, for uniform file ownership, the
/// clients) run as the `postgres` user the Debian package creates.
pub(super) fn os_user() -> Result<Option<OsUser>, PgHarnessError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user(c"postgres")
        .map(Some)
        .ok_or(PgHarnessError::NoPostgresUser)
}

/// getpwnam_r rather than getpwnam: the latter returns a static buffer that another
/// thread (tests run in parallel) may be overwriting.
fn lookup_user(name: &std::ffi::CStr) -> Option<OsUser> {
    // SAFETY: passwd is a plain C struct of integers and pointers; all-zero is a valid
    // value, and getpwnam_r overwrites it before we read it.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer's length is its real
    // length; the strings getpwnam_r stores point into `buffer`, which we never read.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(OsUser {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

/// A command for one of the PostgreSQL binaries, run as `user` in `cwd`.
///
/// `PG*` variables from the caller's environment are removed: a `PGHOST` or
/// `PGDATABASE` meant for some other server must not redirect the harness's clients.
/// `LC_ALL=C` because the server's messages are matched on (port already in use).
/// `cwd` must be readable by `user`: postgres refuses to start in a directory it
/// cannot enter, and the test's own directory may be root's.
pub(super) fn pg_command(
    bin_dir: &Path,
    program: &str,
    user: Option<OsUser>,
    cwd: &Path,
) -> Command {
    let mut command = Command::new(bin_dir.join(program));
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            command.env_remove(key);
        }
    }
    command
        .env("LC_ALL", "C")
        .current_dir(cwd)
        .stdin(Stdio::null());
    if let Some(user) = user {
        std::os::unix::process::CommandExt::uid(&mut command, user.uid);
        std::os::unix::process::CommandExt::gid(&mut command, user.gid);
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        let ten = parse_version(OsStr::new("10")).unwrap();
        let nine_six = parse_version(OsStr::new("9.6")).unwrap();
        assert!(ten > nine_six);
        assert_eq!(parse_version(OsStr::new("15-beta")), None);
    }
}
