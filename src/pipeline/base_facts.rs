//! What the build needs to know about the base image's filesystem: whether `/bin/sh`
//! exists (to run Procfile commands through a shell) and its `/etc/passwd` and `/etc/group`
//! (to resolve a named user). Learned by streaming the base layers' headers once, applying
//! whiteouts, and cached by the base manifest's digest.

use std::collections::HashMap;
use std::fs;
use std::io::Read;

use imgforge_layers::{decompress, Compression, EntryType, LayerReader, Limits, Owner, ReadError};
use serde::{Deserialize, Serialize};

use crate::store::{write_hint, BlobStore, StoreError};
use crate::transport::{ResolvedImage, Source, TransportError};

/// Why a base image's filesystem could not be read. `layer` names the image and the
/// layer (`REF: layer N (DIGEST)`).
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] TransportError),
    #[error("the thread reading the base image's layers panicked")]
    Panicked,
    #[error("{layer}: unsupported media type {media_type}")]
    MediaType { layer: String, media_type: String },
    #[error("{layer}: {source}")]
    Fetch { layer: String, source: TransportError },
    #[error("{layer}: {source}")]
    Read { layer: String, source: std::io::Error },
    #[error("{layer}: {source}")]
    Tar { layer: String, source: ReadError },
}

/// A base image's `User` that its accounts do not resolve.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("the base image's user {0:?} is not in its /etc/passwd; pass --chown UID:GID")]
    UnknownUser(String),
    #[error("the base image's group {0:?} is not in its /etc/group; pass --chown UID:GID")]
    UnknownGroup(String),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BaseFacts {
    pub has_shell: bool,
    pub passwd: Option<String>,
    pub group: Option<String>,
    /// `/etc/os-release` (or `/usr/lib/os-release`, its fallback in os-release(5)).
    #[serde(default)]
    pub os_release: Option<String>,
}

impl BaseFacts {
    /// The distribution's `ID` and `VERSION_ID` from os-release (empty when not given).
    pub fn distro(&self) -> Option<(String, String)> {
        let text = self.os_release.as_deref()?;
        let field = |key: &str| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .next_back()
                .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
                .unwrap_or_default()
        };
        let id = field("ID");
        (!id.is_empty()).then(|| (id, field("VERSION_ID")))
    }
}

const MAX_ACCOUNT_FILE: u64 = 1 << 20;
const MAX_OS_RELEASE: u64 = 64 << 10;
const OS_RELEASE: [&[u8]; 2] = [b"etc/os-release", b"usr/lib/os-release"];

#[derive(Clone, Debug)]
enum Node {
    File,
    Dir,
    Symlink(Vec<u8>),
}

pub fn base_facts(source: &Source, base: &ResolvedImage, store: &BlobStore) -> Result<BaseFacts, FactsError> {
    let Some(digest) = base.manifest_digest else { return Ok(BaseFacts::default()) };
    let cache = store.bucket(crate::store::buckets::BASE_FACTS)?.join(format!("{}.json", digest.hex()));
    if let Some(f) = fs::read(&cache).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        return Ok(f);
    }
    let mut nodes: HashMap<Vec<u8>, Node> = HashMap::new();
    let mut passwd = None;
    let mut group = None;
    let mut os_release: [Option<String>; 2] = [None, None];
    for (i, layer) in base.layers.iter().enumerate() {
        let what = format!("{}: layer {} ({})", base.reference, i + 1, layer.descriptor.digest);
        let media_type = &layer.descriptor.media_type;
        let compression = Compression::from_media_type(media_type)
            .ok_or_else(|| FactsError::MediaType { layer: what.clone(), media_type: media_type.clone() })?;
        let raw = source
            .open_verified(&layer.descriptor)
            .map_err(|source| FactsError::Fetch { layer: what.clone(), source })?;
        let stream = decompress(raw, compression).map_err(|source| FactsError::Read { layer: what.clone(), source })?;
        let mut reader = LayerReader::new(stream, Limits::default());
        let mut added: Vec<(Vec<u8>, Node)> = Vec::new();
        while let Some(e) = reader.next_entry().map_err(|source| FactsError::Tar { layer: what.clone(), source })? {
            let name = e.path.rsplit(|&b| b == b'/').next().unwrap_or(&[]).to_vec();
            let parent = &e.path[..e.path.len() - name.len()];
            if name == b".wh..wh..opq" {
                let dir = parent.to_vec();
                nodes.retain(|p, _| !(p.starts_with(&dir) && p.len() > dir.len()));
                continue;
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                let mut target = parent.to_vec();
                target.extend_from_slice(hidden);
                let mut prefix = target.clone();
                prefix.push(b'/');
                nodes.retain(|p, _| *p != target && !p.starts_with(&prefix));
                continue;
            }
            let node = match e.kind {
                EntryType::Dir => Node::Dir,
                EntryType::Symlink => Node::Symlink(e.link.clone().unwrap_or_default()),
                _ => Node::File,
            };
            if e.kind == EntryType::File
                && e.size <= MAX_ACCOUNT_FILE
                && (e.path == b"etc/passwd" || e.path == b"etc/group")
            {
                let mut text = String::new();
                reader
                    .data()
                    .read_to_string(&mut text)
                    .map_err(|source| FactsError::Read { layer: format!("{what}: {}", e.path_lossy()), source })?;
                if e.path == b"etc/passwd" {
                    passwd = Some(text)
                } else {
                    group = Some(text)
                }
            }
            if e.kind == EntryType::File && e.size <= MAX_OS_RELEASE {
                if let Some(i) = OS_RELEASE.iter().position(|p| *p == e.path.as_slice()) {
                    let mut text = String::new();
                    // Not UTF-8: no distro to tell, which is not an error.
                    os_release[i] = reader.data().read_to_string(&mut text).ok().map(|_| text);
                }
            }
            added.push((e.path, node));
        }
        nodes.extend(added);
    }
    let exists = |p: &[u8]| nodes.contains_key(p);
    let facts = BaseFacts {
        has_shell: matches!(resolve(&nodes, b"bin/sh"), Some(Node::File)),
        passwd: passwd.filter(|_| exists(b"etc/passwd")),
        group: group.filter(|_| exists(b"etc/group")),
        // /etc/os-release is usually a symlink to ../usr/lib/os-release: then the latter.
        os_release: OS_RELEASE
            .iter()
            .zip(os_release)
            .find_map(|(p, text)| text.filter(|_| matches!(nodes.get(*p), Some(Node::File)))),
    };
    let _ = write_hint(&cache, &serde_json::to_vec(&facts).expect("json"));
    Ok(facts)
}

/// Follows symlinks component by component, inside the image's root, at most 40 hops.
fn resolve<'a>(nodes: &'a HashMap<Vec<u8>, Node>, path: &[u8]) -> Option<&'a Node> {
    let mut pending: Vec<Vec<u8>> = path.split(|&b| b == b'/').rev().map(<[u8]>::to_vec).collect();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0;
    let mut last = None;
    while let Some(c) = pending.pop() {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        cur.push(c);
        let joined = cur.join(&b'/');
        match nodes.get(&joined) {
            Some(Node::Symlink(target)) => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                cur.pop();
                if target.starts_with(b"/") {
                    cur.clear();
                }
                pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
            }
            Some(n) => last = Some(n),
            None => return None,
        }
    }
    last
}

/// Resolves the base image's `User` (`name`, `uid`, `name:group`, `uid:gid`) to numbers,
/// as Docker does: a named user must exist in /etc/passwd; a numeric user not in it gets gid 0.
pub fn resolve_user(user: &str, facts: &BaseFacts) -> Result<Owner, UserError> {
    if user.is_empty() {
        return Ok(Owner { uid: 0, gid: 0 });
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = facts.passwd.as_deref().unwrap_or("");
    let lookup = |text: &str, name: &str, field: usize| {
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > field && (f[0] == name || f[2] == name))
                .then(|| (f[2].parse::<u32>().ok(), f.get(field).and_then(|v| v.parse::<u32>().ok())))
        })
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, lookup(passwd, u, 3).and_then(|(_, g)| g).unwrap_or(0)),
        Err(_) => match lookup(passwd, u, 3) {
            Some((Some(uid), Some(gid))) => (uid, gid),
            _ => return Err(UserError::UnknownUser(u.to_string())),
        },
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(facts.group.as_deref().unwrap_or(""), g, 2)
                .and_then(|(gid, _)| gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        },
    };
    Ok(Owner { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_symlinks() {
        let mut n = HashMap::new();
        n.insert(b"bin".to_vec(), Node::Symlink(b"usr/bin".to_vec()));
        n.insert(b"usr".to_vec(), Node::Dir);
        n.insert(b"usr/bin".to_vec(), Node::Dir);
        n.insert(b"usr/bin/sh".to_vec(), Node::Symlink(b"dash".to_vec()));
        n.insert(b"usr/bin/dash".to_vec(), Node::File);
        n.insert(b"loop".to_vec(), Node::Symlink(b"/loop".to_vec()));
        assert!(matches!(resolve(&n, b"bin/sh"), Some(Node::File)));
        assert!(resolve(&n, b"loop").is_none());
        assert!(resolve(&n, b"bin/bash").is_none());
    }

    #[test]
    fn users_resolve_like_docker() {
        let facts = BaseFacts {
            has_shell: true,
            passwd: Some("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n".into()),
            group: Some("root:x:0:\nstaff:x:50:\n".into()),
            os_release: None,
        };
        assert_eq!(resolve_user("", &facts).unwrap(), Owner { uid: 0, gid: 0 });
        assert_eq!(resolve_user("app", &facts).unwrap(), Owner { uid: 1000, gid: 1001 });
        assert_eq!(resolve_user("1000", &facts).unwrap(), Owner { uid: 1000, gid: 1001 });
        assert_eq!(resolve_user("4242", &facts).unwrap(), Owner { uid: 4242, gid: 0 });
        assert_eq!(resolve_user("app:staff", &facts).unwrap(), Owner { uid: 1000, gid: 50 });
        assert_eq!(resolve_user("7:8", &facts).unwrap(), Owner { uid: 7, gid: 8 });
        assert!(resolve_user("nobody", &facts).unwrap_err().to_string().contains("--chown"));
    }

    #[test]
    fn distro_comes_from_os_release() {
        let facts = |text: &str| BaseFacts { os_release: Some(text.into()), ..Default::default() };
        let debian =
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(facts(debian).distro(), Some(("debian".into(), "12".into())));
        assert_eq!(facts("ID='alpine'\nVERSION_ID=3.20.1\n").distro(), Some(("alpine".into(), "3.20.1".into())));
        assert_eq!(facts("ID=arch\n").distro(), Some(("arch".into(), String::new())));
        assert_eq!(facts("NAME=x\n").distro(), None);
        assert_eq!(BaseFacts::default().distro(), None);
    }
}
