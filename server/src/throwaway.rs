//! A throwaway PostgreSQL cluster in a temp folder, for tests and benchmarks: `initdb`, then
//! `postgres` listening on a unix socket only. PostgreSQL refuses to run as root, so as root the
//! cluster runs as the `postgres` user. A watchdog process removes the cluster when this process
//! exits, however it exits (it waits for its stdin, a pipe from us, to close).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// How the cluster trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// PostgreSQL's defaults (fsync, synchronous commit): what a production server does. For benchmarks.
    Production,
    /// No fsync, no synchronous commit: for tests, where the data is thrown away anyway.
    Disposable,
}

#[derive(Debug)]
pub struct ThrowawayPostgres {
    dir: PathBuf,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    bin: PathBuf,
    /// The user the cluster runs as; empty for this process's own.
    user: &'static str,
    /// The server's options, for starting it again after [`Self::pause`].
    options: String,
}

const HOW_TO_FIX: &str = "install the PostgreSQL server binaries (Debian: apt-get install postgresql) \
     so that initdb and postgres are on PATH or under /usr/lib/postgresql/*/bin, \
     or set REDLINE_TEST_DATABASE_URL to a server where the user may CREATE DATABASE";

fn bin_dir() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file());
    if let Some(d) = on_path {
        return Ok(d);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| format!("no PostgreSQL server binaries found: {HOW_TO_FIX}"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .ok_or_else(|| format!("no initdb found: {HOW_TO_FIX}"))
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn postgres_ids() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or_else(|| {
            format!(
                "running as root, and there is no postgres user to run the cluster as: {HOW_TO_FIX}"
            )
        })
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}; {HOW_TO_FIX}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `program args…`, as the cluster's user.
fn as_user(user: &str, program: &Path) -> Command {
    if user.is_empty() {
        Command::new(program)
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--"]).arg(program);
        c
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl ThrowawayPostgres {
    /// Creates and starts a cluster; the error says how to fix a machine that cannot.
    pub fn start(durability: Durability) -> Result<Self, String> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("redline-pg-")
            .tempdir_in("/tmp")
            .map_err(|e| format!("cannot create a temp dir: {e}"))?
            .keep();
        let user = if running_as_root() {
            let (uid, gid) = postgres_ids()?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot hand {} to postgres: {e}", dir.display()))?;
            "postgres"
        } else {
            ""
        };
        let mut options = format!(
            "-k {} -c listen_addresses='' -c max_connections=200",
            shell_quote(&dir.to_string_lossy())
        );
        if durability == Durability::Disposable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        // From here the watchdog owns the folder: it goes whatever happens next.
        let pg = Self {
            watchdog: Mutex::new(Some(spawn_watchdog(&bin, &dir, user)?)),
            dir,
            bin,
            user,
            options,
        };
        let data = pg.dir.join("data");
        run(
            as_user(user, &pg.bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "redline",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
            "initdb",
        )?;
        pg.resume()?;
        Ok(pg)
    }

    /// Stops the server, keeping the cluster: clients see the database go away, as in an outage
    /// or a restart.
    pub fn pause(&self) -> Result<(), String> {
        run(
            as_user(self.user, &self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-t", "60", "-m", "fast", "stop"]),
            "pg_ctl stop",
        )
    }

    /// Starts the server (again, after [`Self::pause`]) and waits until it accepts connections.
    pub fn resume(&self) -> Result<(), String> {
        run(
            as_user(self.user, &self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &self.options, "start"]),
            "pg_ctl start",
        )
    }

    /// A URL for the cluster's `postgres` database as its superuser `redline`.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// A URL for database `db` of the cluster.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://redline@localhost/{db}?host={}",
            self.dir.display()
        )
    }

    /// The folder holding the socket, the data and the server log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the cluster and removes its folder now rather than at exit.
    pub fn stop(&self) {
        let taken = self.watchdog.lock().map(|mut w| w.take());
        if let Ok(Some((mut child, stdin))) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_watchdog(bin: &Path, dir: &Path, user: &str) -> Result<(Child, ChildStdin), String> {
    let pg_ctl = shell_quote(&bin.join("pg_ctl").to_string_lossy());
    let data = shell_quote(&dir.join("data").to_string_lossy());
    let stop = if user.is_empty() {
        format!("{pg_ctl} -D {data} -m immediate stop")
    } else {
        format!("runuser -u {user} -- {pg_ctl} -D {data} -m immediate stop")
    };
    let script = format!(
        "cat >/dev/null; if [ -f {data}/postmaster.pid ]; then {stop} >/dev/null 2>&1; fi; rm -rf {}",
        shell_quote(&dir.to_string_lossy())
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C meant for the tests must not kill the cleanup.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the cleanup watchdog: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Nothing is ever written: the pipe closing is the message.
    stdin.flush().map_err(|e| e.to_string())?;
    Ok((child, stdin))
}

/// Creates database `name` (letters, digits, `_`) on the server of `admin_url` and returns its URL.
pub async fn create_database(
    admin_url: &str,
    name: &str,
) -> Result<String, crate::store::StoreError> {
    use sqlx::Connection;
    assert!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database names are made by Redline's own harness"
    );
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(with_database(admin_url, name))
}

/// `url` with its database path replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_urls_keep_host_and_socket() {
        assert_eq!(
            super::with_database("postgres://u@localhost/postgres?host=/tmp/x", "b"),
            "postgres://u@localhost/b?host=/tmp/x"
        );
        assert_eq!(
            super::with_database("postgres://u:p@h:5432", "b"),
            "postgres://u:p@h:5432/b"
        );
    }
}
