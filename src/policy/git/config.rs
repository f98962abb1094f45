//! The `[policy]` keys of `drawbridge.toml`: unset, the policy is the folder
//! `paths.policies` as it is; with `git`, the policy is the commit at the head of `ref`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::source::GitSettings;
use crate::config::Config;
use crate::util::serde_duration;

/// The bare clone's folder name, beside the audit log (`var/policy.git` by default).
pub const CLONE_NAME: &str = "policy.git";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The repository to fetch: a URL, or a path (relative to the config's folder).
    pub git: Option<String>,
    /// The branch (or a full `refs/...` name) whose head is applied.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// How often the ref is fetched (SIGHUP fetches at once).
    #[serde(with = "serde_duration")]
    pub poll: Duration,
    /// An OpenSSH allowed_signers file: only commits signed by a key it allows apply.
    pub allowed_signers: Option<PathBuf>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            git: None,
            git_ref: "main".into(),
            poll: Duration::from_secs(30),
            allowed_signers: None,
        }
    }
}

impl PolicyConfig {
    /// The keys' own rules (a typo fails the start, never parses green).
    pub fn validate(&self) -> Result<(), String> {
        let Some(url) = &self.git else {
            if self.allowed_signers.is_some() {
                return Err(
                    "policy.allowed_signers is set but policy.git is not: signatures \
                            are checked only on a policy read from Git"
                        .into(),
                );
            }
            return Ok(());
        };
        if url.trim().is_empty() || url.starts_with('-') {
            return Err(format!(
                "policy.git {url:?} is not a repository URL or path"
            ));
        }
        let r = &self.git_ref;
        let bad = r.is_empty()
            || r.starts_with('-')
            || r.starts_with('/')
            || r.ends_with('/')
            || r.ends_with(".lock")
            || r.contains("..")
            || r.contains("//")
            || r.contains("@{")
            || !r
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        if bad {
            return Err(format!(
                "policy.ref {r:?} is not a branch name (letters, digits, '.', '_', '-', '/')"
            ));
        }
        if self.poll < Duration::from_millis(100) {
            return Err("policy.poll must be at least 100ms".into());
        }
        Ok(())
    }
}

/// Whether `git` names a remote (a URL, or `host:path` as scp writes it) rather than a
/// local path.
fn is_remote(git: &str) -> bool {
    if git.contains("://") {
        return true;
    }
    match (git.find(':'), git.find('/')) {
        (Some(colon), Some(slash)) => colon < slash,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The Git settings of `config`, or `None` in folder mode.
pub fn settings(config: &Config) -> Option<GitSettings> {
    let p = &config.policy;
    let url = p.git.as_ref()?;
    let url = if is_remote(url) {
        url.clone()
    } else {
        config
            .resolve(std::path::Path::new(url))
            .display()
            .to_string()
    };
    let audit = config.audit_path();
    let clone_dir = audit
        .parent()
        .map(|d| d.join(CLONE_NAME))
        .unwrap_or_else(|| PathBuf::from(CLONE_NAME));
    Some(GitSettings {
        url,
        git_ref: p.git_ref.clone(),
        poll: p.poll,
        allowed_signers: p.allowed_signers.as_ref().map(|a| config.resolve(a)),
        clone_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_parse_and_resolve() {
        let mut c = Config::parse(
            "[policy]\ngit = \"access\"\nref = \"prod\"\npoll = \"1s\"\nallowed_signers = \"ca/allowed_signers\"\n",
        )
        .unwrap();
        c.base_dir = "/etc/drawbridge".into();
        let s = settings(&c).unwrap();
        assert_eq!(s.url, "/etc/drawbridge/access");
        assert_eq!(s.git_ref, "prod");
        assert_eq!(s.poll, Duration::from_secs(1));
        assert_eq!(
            s.allowed_signers.unwrap(),
            PathBuf::from("/etc/drawbridge/ca/allowed_signers")
        );
        assert_eq!(s.clone_dir, PathBuf::from("/etc/drawbridge/var/policy.git"));
        for remote in [
            "https://git.example.org/a.git",
            "git@git.example.org:infra/a.git",
        ] {
            c.policy.git = Some(remote.into());
            assert_eq!(settings(&c).unwrap().url, remote);
        }
        assert!(settings(&Config::default()).is_none());
    }

    #[test]
    fn bad_values_are_errors() {
        for text in [
            "[policy]\nallowed_signers = \"x\"\n",
            "[policy]\ngit = \"a\"\nref = \"../x\"\n",
            "[policy]\ngit = \"a\"\nref = \"-x\"\n",
            "[policy]\ngit = \"--upload-pack=x\"\n",
            "[policy]\ngit = \"a\"\npoll = \"1ms\"\n",
            "[policy]\ngit = \"a\"\nbranch = \"main\"\n",
        ] {
            assert!(Config::parse(text).is_err(), "{text}");
        }
    }
}
