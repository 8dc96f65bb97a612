//! Splitting a buildpack-built app directory into layers that change at different rates.
//!
//! The rule (deterministic, documented in docs/image-format.md): every entry of the built
//! directory goes into exactly one layer.
//! - **app**: entries unchanged from the app's source (same path, kind, mode, size, content);
//! - **runtime:<dir>**: for each directory that compile created whose parent existed in the
//!   source (the shallowest new directory: `.heroku`, `node_modules`, `vendor/bundle`), that
//!   directory and everything under it;
//! - **runtime:misc**: everything else compile added or changed.
//!
//! At most [`MAX_RUNTIME_GROUPS`] directory layers are made (largest first); smaller ones
//! join `runtime:misc`. Layers go in the order: runtime directories by path, misc, app. Each
//! layer carries the directories above its entries, so it stands alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imgforge_layers::{EntryKind, Tree, TreeEntry};

use crate::store::stat_cache::StatCache;

pub const MAX_RUNTIME_GROUPS: usize = 8;

/// One layer to write: its name and the entries (a subset of the built tree) it holds.
pub struct LayerPart {
    pub name: String,
    pub tree: Tree,
}

/// Copies the staged app tree into `dest` (a fresh directory), priming `build_stat` with
/// the copies' hashes (known from the source) so they are never read again.
pub fn copy_app(tree: &Tree, dest: &Path, app_stat: &mut StatCache, build_stat: &mut StatCache) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    for e in &tree.entries {
        let src = tree.root.join(&e.rel);
        let to = dest.join(&e.rel);
        match &e.kind {
            EntryKind::Dir => {
                fs::create_dir(&to)?;
                fs::set_permissions(&to, fs::Permissions::from_mode((e.mode & 0o777) | 0o700))?;
            }
            EntryKind::File => {
                let hash = app_stat.content_hash(&src, e)?;
                fs::copy(&src, &to)?;
                let copied = entry_from_meta(&e.rel, e.kind.clone(), &fs::symlink_metadata(&to)?);
                if copied.size != e.size {
                    return Err(io::Error::other(format!("file changed while it was being copied: {}", src.display())));
                }
                build_stat.prime(&to, &copied, hash);
            }
            EntryKind::Symlink(target) => {
                use std::os::unix::ffi::OsStrExt;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &to)?;
            }
            EntryKind::HardLink(first) => fs::hard_link(dest.join(first), &to)?,
        }
    }
    Ok(())
}

fn entry_from_meta(rel: &Path, kind: EntryKind, m: &fs::Metadata) -> TreeEntry {
    TreeEntry {
        rel: rel.to_path_buf(),
        kind,
        mode: m.mode() & 0o7777,
        size: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        ino: m.ino(),
        dev: m.dev(),
        host_uid: m.uid(),
        host_gid: m.gid(),
        owner: None,
    }
}

/// Splits `built` into layer parts. `original` maps each source path to its entry hash,
/// `built_items[i]` is the entry hash of `built.entries[i]` (both from `tree_key`).
pub fn split(built: &Tree, built_items: &[(String, String)], original: &HashMap<PathBuf, String>) -> Vec<LayerPart> {
    let original_dirs: HashSet<&Path> = original.keys().map(PathBuf::as_path).collect();
    let built_dirs: HashSet<&Path> =
        built.entries.iter().filter(|e| e.kind == EntryKind::Dir).map(|e| e.rel.as_path()).collect();
    let index: HashMap<&Path, usize> = built.entries.iter().enumerate().map(|(i, e)| (e.rel.as_path(), i)).collect();

    #[derive(PartialEq, Eq, PartialOrd, Ord, Clone)]
    enum Group {
        Dir(PathBuf),
        Misc,
        App,
    }
    let group_of = |i: usize| -> Group {
        let e = &built.entries[i];
        if original.get(&e.rel) == Some(&built_items[i].1) {
            return Group::App;
        }
        let mut prefix = PathBuf::new();
        for c in e.rel.components() {
            prefix.push(c);
            if !original_dirs.contains(prefix.as_path()) {
                return if built_dirs.contains(prefix.as_path()) { Group::Dir(prefix) } else { Group::Misc };
            }
        }
        Group::Misc
    };
    let mut groups: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
    for i in 0..built.entries.len() {
        groups.entry(group_of(i)).or_default().push(i);
    }
    // Keep the largest directory groups; fold the rest into misc.
    let mut dir_groups: Vec<(u64, Group)> = groups
        .iter()
        .filter(|(g, _)| matches!(g, Group::Dir(_)))
        .map(|(g, ix)| (ix.iter().map(|&i| built.entries[i].size).sum(), g.clone()))
        .collect();
    dir_groups.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (_, g) in dir_groups.into_iter().skip(MAX_RUNTIME_GROUPS) {
        let moved = groups.remove(&g).unwrap_or_default();
        groups.entry(Group::Misc).or_default().extend(moved);
    }

    let mut parts = Vec::new();
    for (group, members) in groups {
        let name = match &group {
            Group::Dir(p) => format!("runtime:{}", p.display()),
            Group::Misc => "runtime:misc".into(),
            Group::App => "app".into(),
        };
        parts.push(part(built, &index, name, members));
    }
    parts
}

/// A layer of `members` (indices into `built`) plus the directories above them, so the
/// layer stands alone.
fn part(built: &Tree, index: &HashMap<&Path, usize>, name: String, mut members: Vec<usize>) -> LayerPart {
    let member_set: HashSet<usize> = members.iter().copied().collect();
    let mut with_parents: HashSet<usize> = member_set.clone();
    for &i in &members {
        for anc in built.entries[i].rel.ancestors().skip(1) {
            if let Some(&j) = index.get(anc) {
                with_parents.insert(j);
            }
        }
    }
    members = with_parents.into_iter().collect();
    members.sort_unstable();
    let entries = members
        .iter()
        .map(|&i| {
            let mut e = built.entries[i].clone();
            // A hard link whose first path lives in another layer carries its own data.
            if let EntryKind::HardLink(first) = &e.kind {
                if !index.get(first.as_path()).is_some_and(|j| member_set.contains(j)) {
                    e.kind = EntryKind::File;
                }
            }
            e
        })
        .collect();
    LayerPart { name, tree: Tree { root: built.root.clone(), entries, skipped: Vec::new() } }
}

/// A `[[slices]]` path that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("slice path {path:?}: {source}")]
pub struct SliceError {
    pub path: String,
    pub source: ignore::Error,
}

/// Splits the app by Cloud Native Buildpacks' `[[slices]]`: each slice's paths are globs
/// relative to the app directory (gitignore syntax, anchored at the app: `*` stays within
/// one directory, `**` crosses them, a matched directory takes its whole subtree). An entry
/// goes to the first slice that matches it; slices that match nothing make no layer;
/// everything else goes to the last part, `app`. Parts are named `slice-<n>` (from 1).
pub fn slices(built: &Tree, globs: &[Vec<String>]) -> Result<Vec<LayerPart>, SliceError> {
    let index: HashMap<&Path, usize> = built.entries.iter().enumerate().map(|(i, e)| (e.rel.as_path(), i)).collect();
    let mut matchers = Vec::new();
    for paths in globs {
        let mut b = ignore::gitignore::GitignoreBuilder::new(&built.root);
        for p in paths {
            let anchored = format!("/{}", p.trim_start_matches("./").trim_start_matches('/'));
            b.add_line(None, &anchored).map_err(|source| SliceError { path: p.clone(), source })?;
        }
        matchers.push(b.build().map_err(|source| SliceError { path: paths.join(", "), source })?);
    }
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); matchers.len() + 1];
    for (i, e) in built.entries.iter().enumerate() {
        let is_dir = e.kind == EntryKind::Dir;
        let slot = matchers
            .iter()
            .position(|m| m.matched_path_or_any_parents(&e.rel, is_dir).is_ignore())
            .unwrap_or(matchers.len());
        groups[slot].push(i);
    }
    let app = groups.pop().unwrap_or_default();
    let mut parts: Vec<LayerPart> = groups
        .into_iter()
        .enumerate()
        .filter(|(_, m)| !m.is_empty())
        .map(|(n, m)| part(built, &index, format!("slice-{}", n + 1), m))
        .collect();
    parts.push(part(built, &index, "app".into(), app));
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layer_cache::tree_key;
    use imgforge_layers::{scan_tree, CompressOptions, Compression, Normalize, Owner};

    fn items(tree: &Tree) -> Vec<(String, String)> {
        let opts = CompressOptions { compression: Compression::Gzip, level: None, threads: 1 };
        tree_key(tree, b"app", Owner { uid: 0, gid: 0 }, &Normalize::default(), &opts, &mut StatCache::ephemeral())
            .unwrap()
            .items
    }

    #[test]
    fn splits_by_new_directories() {
        let src = tempfile::tempdir().unwrap();
        let w = |p: &str, c: &str| {
            let p = src.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, c).unwrap();
        };
        w("app.py", "print(1)");
        w("vendor/README", "vendored");
        w("requirements.txt", "x");
        let app = scan_tree(src.path(), &|_, _| true).unwrap();
        let original: HashMap<PathBuf, String> =
            app.entries.iter().map(|e| e.rel.clone()).zip(items(&app).into_iter().map(|i| i.1)).collect();

        let build = tempfile::tempdir().unwrap();
        let dest = build.path().join("app");
        copy_app(&app, &dest, &mut StatCache::ephemeral(), &mut StatCache::ephemeral()).unwrap();
        let w = |p: &str, c: &str| {
            let p = dest.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, c).unwrap();
        };
        w(".heroku/python/lib/x.py", "lib");
        w("vendor/bundle/gems/a.rb", "gem");
        w("requirements.txt", "changed by compile");
        w("new-top-file", "n");
        let built = scan_tree(&dest, &|_, _| true).unwrap();
        let parts = split(&built, &items(&built), &original);
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["runtime:.heroku", "runtime:vendor/bundle", "runtime:misc", "app"]);
        let paths = |name: &str| -> Vec<String> {
            let p = parts.iter().find(|p| p.name == name).unwrap();
            p.tree.entries.iter().map(|e| e.rel.display().to_string()).collect()
        };
        assert_eq!(paths("runtime:misc"), ["new-top-file", "requirements.txt"]);
        assert_eq!(paths("app"), ["app.py", "vendor", "vendor/README"]);
        assert_eq!(
            paths("runtime:vendor/bundle"),
            ["vendor", "vendor/bundle", "vendor/bundle/gems", "vendor/bundle/gems/a.rb"]
        );
        assert!(paths("runtime:.heroku").contains(&".heroku/python/lib/x.py".to_string()));
    }

    #[test]
    fn slices_take_their_globs_first_match_wins() {
        let src = tempfile::tempdir().unwrap();
        for p in ["public/a.css", "public/img/b.png", "lib/x.js", "lib/y.txt", "server.js"] {
            let p = src.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "x").unwrap();
        }
        let tree = scan_tree(src.path(), &|_, _| true).unwrap();
        let globs =
            vec![vec!["public".to_string()], vec!["lib/*.js".into(), "public/a.css".into()], vec!["nothing/*".into()]];
        let parts = slices(&tree, &globs).unwrap();
        let paths =
            |n: usize| -> Vec<String> { parts[n].tree.entries.iter().map(|e| e.rel.display().to_string()).collect() };
        assert_eq!(parts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["slice-1", "slice-2", "app"]);
        assert_eq!(paths(0), ["public", "public/a.css", "public/img", "public/img/b.png"]);
        assert_eq!(paths(1), ["lib", "lib/x.js"]);
        assert_eq!(paths(2), ["lib", "lib/y.txt", "server.js"]);
    }
}
