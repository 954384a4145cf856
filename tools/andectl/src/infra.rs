//! NATS and Postgres for `andectl up`: use the ones `NATS_URL` and `DATABASE_URL` point at when
//! they answer; otherwise start them from the `nats-server`, `initdb` and `postgres` binaries on
//! the PATH, with their data under `target/andectl/`; otherwise say exactly what to install.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::ExposeSecret;
use tokio::process::{Child, Command};

use ande_platform::config::CommonConfig;

/// Processes started here; they are killed when this is dropped (Ctrl-C on `up`).
#[derive(Default)]
pub struct Started {
    children: Vec<(&'static str, Child)>,
}

/// How long a started server gets to shut down cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Started {
    pub fn names(&self) -> Vec<&'static str> {
        self.children.iter().map(|(n, _)| *n).collect()
    }

    /// Stop the servers started here: SIGTERM (postgres shuts down cleanly; `runuser`, used
    /// when we are root, passes the signal on), then a kill after [`STOP_GRACE`].
    pub async fn stop(mut self) {
        for (name, child) in &mut self.children {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(server = *name, "did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

async fn answers(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// host and port of a URL like `scheme://user:pw@host:port/path`.
pub fn host_port(url: &str, default_port: u16) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or("127.0.0.1");
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(default_port)),
        None => (hostport.to_string(), default_port),
    }
}

fn on_path(bin: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // Debian keeps the server binaries out of PATH.
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

async fn wait_for(host: &str, port: u16, what: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if answers(host, port).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not start listening on {host}:{port}")
}

/// Where a started server writes its output (appended), so it does not mix with ours.
fn log_file(data_dir: &Path, name: &str) -> anyhow::Result<std::process::Stdio> {
    std::fs::create_dir_all(data_dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join(name))
        .with_context(|| format!("opening {}", data_dir.join(name).display()))?;
    Ok(f.into())
}

/// Make sure NATS and Postgres answer, starting them when needed.
pub async fn ensure(common: &CommonConfig, data_dir: &Path) -> anyhow::Result<Started> {
    let mut started = Started::default();
    let (nh, np) = host_port(&common.nats_url, 4222);
    if !answers(&nh, np).await {
        let Some(bin) = on_path("nats-server") else {
            bail!("NATS does not answer at {} and nats-server is not installed.\n  Install it (Debian: apt-get install nats-server), or point NATS_URL at a running one", ande_platform::config::redact_url(&common.nats_url));
        };
        let dir = data_dir.join("nats");
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(bin)
            .args(["-js", "-a", &nh, "-p", &np.to_string(), "-sd"])
            .arg(&dir)
            .stdout(log_file(data_dir, "nats-server.log")?)
            .stderr(log_file(data_dir, "nats-server.log")?)
            .kill_on_drop(true)
            .spawn()
            .context("starting nats-server")?;
        started.children.push(("nats-server", child));
        wait_for(&nh, np, "nats-server").await?;
    }
    let url = common.database_url.expose_secret().to_string();
    let (ph, pp) = host_port(&url, 5432);
    if !answers(&ph, pp).await {
        let (Some(initdb), Some(postgres)) = (on_path("initdb"), on_path("postgres")) else {
            bail!("Postgres does not answer at {ph}:{pp} and initdb/postgres are not installed.\n  Install them (Debian: apt-get install postgresql), or point DATABASE_URL at a running one");
        };
        let dir = data_dir.join("postgres");
        let as_root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
            || std::env::var("HOME").map(|h| h == "/root").unwrap_or(false);
        let wrap = |bin: &Path| -> Command {
            // Postgres refuses to run as root: run it as the postgres user when we are root.
            if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin);
                c
            } else {
                Command::new(bin)
            }
        };
        if !dir.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&dir)?;
            if as_root {
                let _ = std::process::Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(&dir)
                    .status();
            }
            let ok = wrap(&initdb)
                .stdout(log_file(data_dir, "postgres.log")?)
                .stderr(log_file(data_dir, "postgres.log")?)
                .arg("-D")
                .arg(&dir)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .status()
                .await?
                .success();
            if !ok {
                bail!("initdb failed for {}", dir.display());
            }
        }
        let child = wrap(&postgres)
            .arg("-D")
            .arg(&dir)
            .args(["-h", &ph, "-p", &pp.to_string(), "-k", "/tmp"])
            .stdout(log_file(data_dir, "postgres.log")?)
            .stderr(log_file(data_dir, "postgres.log")?)
            .kill_on_drop(true)
            .spawn()
            .context("starting postgres")?;
        started.children.push(("postgres", child));
        wait_for(&ph, pp, "postgres").await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_reads_urls() {
        assert_eq!(
            host_port("nats://127.0.0.1:4222", 1),
            ("127.0.0.1".into(), 4222)
        );
        assert_eq!(
            host_port("postgres://u:p@db:5433/x?sslmode=disable", 5432),
            ("db".into(), 5433)
        );
        assert_eq!(host_port("postgres://db/x", 5432), ("db".into(), 5432));
    }
}
