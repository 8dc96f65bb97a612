//! The app's git revision and source URL, read from `.git` files (no git binary needed).

use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct GitInfo {
    pub revision: Option<String>,
    pub source: Option<String>,
}

/// Only the app directory itself counts as a checkout: an app that merely sits somewhere
/// inside a repository (a fixture, a vendored copy) must not take that repository's HEAD,
/// or its digest would change with every unrelated commit.
fn find_git_dir(dir: &Path) -> Option<PathBuf> {
    let dot_git = dir.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git);
    }
    // A worktree or submodule: "gitdir: PATH".
    let text = fs::read_to_string(&dot_git).ok()?;
    let p = PathBuf::from(text.strip_prefix("gitdir:")?.trim());
    Some(if p.is_absolute() { p } else { dir.join(p) })
}

fn is_hex_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn resolve_ref(git_dir: &Path, common: &Path, name: &str) -> Option<String> {
    for d in [git_dir, common] {
        if let Ok(s) = fs::read_to_string(d.join(name)) {
            let s = s.trim();
            return is_hex_sha(s).then(|| s.to_string());
        }
    }
    let packed = fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|l| {
        let (sha, r) = l.split_once(' ')?;
        (r == name && is_hex_sha(sha)).then(|| sha.to_string())
    })
}

/// Removes credentials from a URL (`https://user:token@host/x` → `https://host/x`).
pub fn strip_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if path.is_empty() && !rest.contains('/') {
            return format!("{scheme}://{host}");
        }
        return format!("{scheme}://{host}/{path}");
    }
    url.to_string()
}

pub fn read(app_dir: &Path) -> GitInfo {
    let Some(git_dir) = find_git_dir(app_dir) else { return GitInfo::default() };
    let common = fs::read_to_string(git_dir.join("commondir"))
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|_| git_dir.clone());
    let head = fs::read_to_string(git_dir.join("HEAD")).unwrap_or_default();
    let head = head.trim();
    let revision = match head.strip_prefix("ref:") {
        Some(r) => resolve_ref(&git_dir, &common, r.trim()),
        None => is_hex_sha(head).then(|| head.to_string()),
    };
    let source = fs::read_to_string(common.join("config")).ok().and_then(|cfg| {
        let mut in_origin = false;
        for l in cfg.lines() {
            let l = l.trim();
            if l.starts_with('[') {
                in_origin = l == "[remote \"origin\"]";
            } else if in_origin {
                if let Some((k, v)) = l.split_once('=') {
                    if k.trim() == "url" {
                        return Some(strip_credentials(v.trim()));
                    }
                }
            }
        }
        None
    });
    GitInfo { revision, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_head_and_origin_without_credentials() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join(".git");
        fs::create_dir_all(g.join("refs/heads")).unwrap();
        fs::write(g.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        let sha = "0123456789abcdef0123456789abcdef01234567";
        fs::write(g.join("packed-refs"), format!("# pack-refs\n{sha} refs/heads/main\n")).unwrap();
        fs::write(
            g.join("config"),
            "[core]\n\tbare = false\n[remote \"origin\"]\n\turl = https://bob:s3cret@git.example.com/team/app.git\n",
        )
        .unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        assert_eq!(read(&d.path().join("sub")), GitInfo::default(), "a subdirectory is not a checkout");
        let info = read(d.path());
        assert_eq!(info.revision.as_deref(), Some(sha));
        assert_eq!(info.source.as_deref(), Some("https://git.example.com/team/app.git"));
        assert_eq!(strip_credentials("git@github.com:o/r.git"), "git@github.com:o/r.git");
    }
}
