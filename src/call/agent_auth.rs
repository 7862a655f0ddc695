//! The agent runtime's own credentials (`--agent-credentials`), for teams that want digest on
//! the agent-facing listener beside `--agent-networks`: a new INVITE from the agent runtime is
//! then challenged (407) and must answer with them.
//!
//! The path is a file with `USERNAME:PASSWORD` on its first line, or a directory holding
//! `username` and `password` files (a mounted `kubernetes.io/basic-auth` Secret). It is read at
//! start (an error then stops the gateway) and again whenever its modification time changes,
//! so a rotated Secret applies without a restart; a change that cannot be read keeps the last
//! good credentials, with a warning. The password is never logged.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::config::secret::{BasicAuth, Password};

/// Why the credentials cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum AgentCredentialsError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: &'static str },
}

/// The credentials, re-read when their file changes.
pub struct AgentCredentials {
    path: PathBuf,
    current: Mutex<(Option<SystemTime>, BasicAuth)>,
}

impl std::fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredentials").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AgentCredentials {
    pub fn load(path: &Path) -> Result<AgentCredentials, AgentCredentialsError> {
        let stamp = modified(path);
        let credentials = read(path)?;
        Ok(AgentCredentials { path: path.to_path_buf(), current: Mutex::new((stamp, credentials)) })
    }

    /// The credentials now (read again if the file changed).
    pub fn current(&self) -> Option<BasicAuth> {
        let mut current = self.current.lock().ok()?;
        let stamp = modified(&self.path);
        if stamp != current.0 {
            match read(&self.path) {
                Ok(c) => *current = (stamp, c),
                Err(e) => {
                    tracing::warn!(error = %e, "agent credentials changed and cannot be read; keeping the last ones");
                    current.0 = stamp;
                }
            }
        }
        Some(current.1.clone())
    }
}

/// The latest modification time of the file, or of the directory's two files.
fn modified(path: &Path) -> Option<SystemTime> {
    let of = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if path.is_dir() {
        of(&path.join("username")).max(of(&path.join("password")))
    } else {
        of(path)
    }
}

fn read(path: &Path) -> Result<BasicAuth, AgentCredentialsError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|source| AgentCredentialsError::Read { path: p.to_path_buf(), source })
    };
    let invalid = |problem| AgentCredentialsError::Invalid { path: path.to_path_buf(), problem };
    let (username, password) = if path.is_dir() {
        let username = read(&path.join("username"))?.trim().to_string();
        let password = read(&path.join("password"))?.trim_end_matches(['\r', '\n']).to_string();
        (username, password)
    } else {
        let text = read(path)?;
        let line = text.lines().next().unwrap_or_default();
        let (u, p) = line.split_once(':').ok_or_else(|| invalid("expected USERNAME:PASSWORD"))?;
        (u.trim().to_string(), p.to_string())
    };
    if username.is_empty() || password.is_empty() {
        return Err(invalid("the username and the password must not be empty"));
    }
    if username.chars().any(|c| c.is_control() || c == '"') {
        return Err(invalid("the username has a control character or a quote"));
    }
    Ok(BasicAuth { username, password: Password::new(password) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir()
            .join(format!("trunkline-agent-auth-{}", crate::call::machine::Ids::random().token(8)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_file_or_a_mounted_basic_auth_secret_gives_the_credentials() {
        let d = dir();
        let file = d.join("creds");
        std::fs::write(&file, "bot:pa:ss\nignored\n").unwrap();
        let c = AgentCredentials::load(&file).unwrap().current().unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("bot", "pa:ss"));
        let secret = d.join("secret");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("username"), "bot\n").unwrap();
        std::fs::write(secret.join("password"), "s3cret\n").unwrap();
        let c = AgentCredentials::load(&secret).unwrap().current().unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("bot", "s3cret"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn bad_files_are_named_errors_and_a_bad_change_keeps_the_last_good_ones() {
        let d = dir();
        let file = d.join("creds");
        std::fs::write(&file, "no-colon\n").unwrap();
        let e = AgentCredentials::load(&file).unwrap_err().to_string();
        assert!(e.contains("creds") && e.contains("USERNAME:PASSWORD"), "{e}");
        assert!(AgentCredentials::load(&d.join("missing")).is_err());
        std::fs::write(&file, "bot:one\n").unwrap();
        let creds = AgentCredentials::load(&file).unwrap();
        std::fs::write(&file, "bot:two\n").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        assert_eq!(creds.current().unwrap().password.expose(), "two", "a change is read");
        std::fs::write(&file, ":\n").unwrap();
        let later = later + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        assert_eq!(creds.current().unwrap().password.expose(), "two", "the last good ones stay");
        assert!(!format!("{creds:?}").contains("two"));
        let _ = std::fs::remove_dir_all(d);
    }
}
