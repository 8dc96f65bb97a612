//! Finding buildpacks by id and version, and expanding composite buildpacks' orders into
//! the flat candidate groups detection tries, in the order the lifecycle tries them.
//!
//! Rules (the spec's, with the lifecycle's choices where the spec is silent):
//! * a group's elements keep their order; a composite element is replaced by each group of
//!   its `[[order]]` in turn, so for `[A, C, B]` with C's order `[X] [Y]` the candidates are
//!   `[A, X, B]` then `[A, Y, B]`; several composites multiply, the first one varying
//!   slowest;
//! * an optional composite makes everything it contains optional, and adds one last
//!   candidate without it (when none of its groups can pass, the group goes on without it);
//! * a buildpack id appears at most once in a candidate: a later repeat is dropped;
//! * an order entry without a version matches the only version found, and is an error
//!   when several are found.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::descriptor::{Descriptor, GroupEntry, DESCRIPTOR};
use super::{io_err, CnbError};

/// Most candidate groups one order may expand to.
pub const MAX_CANDIDATES: usize = 1024;
/// Deepest nesting of composites.
const MAX_DEPTH: usize = 16;

/// Buildpacks that order entries can name.
#[derive(Debug, Default)]
pub struct Index {
    by_id: BTreeMap<String, Vec<Arc<Descriptor>>>,
}

impl Index {
    /// Adds every subdirectory of `dir` holding a `buildpack.toml`, and also the
    /// `<id>/<version>/` layout the lifecycle uses under `/cnb/buildpacks`.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), CnbError> {
        for p in buildpack_dirs(dir)? {
            self.add(Descriptor::load(&p)?);
        }
        Ok(())
    }

    /// [`Index::add_dir`], but a buildpack whose `buildpack.toml` cannot be used is left
    /// out; the errors are returned (for buildpacks that merely sit next to the one named).
    pub fn add_dir_lenient(&mut self, dir: &Path) -> Vec<CnbError> {
        let dirs = match buildpack_dirs(dir) {
            Ok(d) => d,
            Err(e) => return vec![e],
        };
        let mut skipped = Vec::new();
        for p in dirs {
            match Descriptor::load(&p) {
                Ok(d) => {
                    self.add(d);
                }
                Err(e) => skipped.push(e),
            }
        }
        skipped
    }

    pub fn add(&mut self, d: Descriptor) -> Arc<Descriptor> {
        let list = self.by_id.entry(d.info.id.clone()).or_default();
        if let Some(same) = list.iter().find(|x| x.info.version == d.info.version) {
            return same.clone();
        }
        let d = Arc::new(d);
        list.push(d.clone());
        d
    }

    pub fn find(&self, e: &GroupEntry, wanted_by: &str) -> Result<Arc<Descriptor>, CnbError> {
        let found = self.by_id.get(&e.id).map(Vec::as_slice).unwrap_or_default();
        let versions = || found.iter().map(|d| d.info.version.as_str()).collect::<Vec<_>>().join(", ");
        if e.version.is_empty() {
            return match found {
                [one] => Ok(one.clone()),
                [] => Err(CnbError::Order(format!(
                    "{wanted_by} names buildpack {e}, which is not in --buildpacks-dir nor next to {wanted_by}"
                ))),
                _ => Err(CnbError::Order(format!(
                    "{wanted_by} names buildpack {e} without a version, and several are found ({}): give the version",
                    versions()
                ))),
            };
        }
        found.iter().find(|d| d.info.version == e.version).cloned().ok_or_else(|| {
            let have = if found.is_empty() { String::new() } else { format!(" (found versions: {})", versions()) };
            CnbError::Order(format!(
                "{wanted_by} names buildpack {e}, which is not in --buildpacks-dir nor next to {wanted_by}{have}"
            ))
        })
    }

    /// Every buildpack in the index.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Descriptor>> {
        self.by_id.values().flatten()
    }

    /// Whether some composite in the index names `id` in its order.
    pub fn is_referenced(&self, id: &str) -> bool {
        self.by_id.values().flatten().any(|d| d.order.iter().any(|g| g.group.iter().any(|e| e.id == id)))
    }
}

/// The buildpack directories in `dir`: subdirectories holding a `buildpack.toml`, and the
/// `<id>/<version>/` layout the lifecycle uses under `/cnb/buildpacks`. Hidden ones skipped.
pub fn buildpack_dirs(dir: &Path) -> Result<Vec<std::path::PathBuf>, CnbError> {
    let entries = fs::read_dir(dir).map_err(io_err(format!("Failed to read {}", dir.display())))?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        if !p.is_dir() || p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".")) {
            continue;
        }
        if p.join(DESCRIPTOR).is_file() {
            out.push(p);
        } else if let Ok(versions) = fs::read_dir(&p) {
            let mut vs: Vec<_> = versions.filter_map(|e| e.ok().map(|e| e.path())).collect();
            vs.sort();
            out.extend(vs.into_iter().filter(|v| v.join(DESCRIPTOR).is_file()));
        }
    }
    Ok(out)
}

/// One buildpack of a candidate group: executable (never composite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub bp: Arc<Descriptor>,
    pub optional: bool,
}

/// Expands one top-level group (`(buildpack, optional)` in order) into candidate groups of
/// executable buildpacks.
pub fn expand(group: &[(Arc<Descriptor>, bool)], index: &Index) -> Result<Vec<Vec<Member>>, CnbError> {
    let mut out = vec![Vec::new()];
    for (bp, optional) in group {
        out = append(out, bp, *optional, index, 0)?;
    }
    Ok(out.into_iter().map(dedupe).filter(|g| !g.is_empty()).collect())
}

/// Every candidate in `heads` followed by every expansion of `bp`.
fn append(
    heads: Vec<Vec<Member>>,
    bp: &Arc<Descriptor>,
    optional: bool,
    index: &Index,
    depth: usize,
) -> Result<Vec<Vec<Member>>, CnbError> {
    let tails = alternatives(bp, optional, index, depth)?;
    if heads.len().saturating_mul(tails.len()) > MAX_CANDIDATES {
        return Err(CnbError::Order(format!(
            "the order of {} expands to over {MAX_CANDIDATES} candidate groups",
            bp.key()
        )));
    }
    let mut out = Vec::with_capacity(heads.len() * tails.len());
    for h in &heads {
        for t in &tails {
            out.push(h.iter().chain(t).cloned().collect());
        }
    }
    Ok(out)
}

/// The flat sequences one element can stand for.
fn alternatives(
    bp: &Arc<Descriptor>,
    optional: bool,
    index: &Index,
    depth: usize,
) -> Result<Vec<Vec<Member>>, CnbError> {
    if !bp.is_composite() {
        return Ok(vec![vec![Member { bp: bp.clone(), optional }]]);
    }
    if depth >= MAX_DEPTH {
        return Err(CnbError::Order(format!(
            "composite buildpacks nest deeper than {MAX_DEPTH} levels at {} (a cycle?)",
            bp.key()
        )));
    }
    let mut out = Vec::new();
    for g in &bp.order {
        let mut seqs = vec![Vec::new()];
        for e in &g.group {
            let child = index.find(e, &format!("{} ({})", bp.key(), bp.dir.join(DESCRIPTOR).display()))?;
            seqs = append(seqs, &child, e.optional || optional, index, depth + 1)?;
        }
        out.extend(seqs);
    }
    if optional {
        out.push(Vec::new());
    }
    Ok(out)
}

fn dedupe(group: Vec<Member>) -> Vec<Member> {
    let mut seen = std::collections::HashSet::new();
    group.into_iter().filter(|m| seen.insert(m.bp.info.id.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildpack::cnb::descriptor::{Api, Group, Info};
    use std::path::PathBuf;

    fn bp(id: &str, version: &str, order: &[&[(&str, bool)]]) -> Descriptor {
        Descriptor {
            api: Api { major: 0, minor: 10 },
            info: Info { id: id.into(), version: version.into(), ..Default::default() },
            targets: Vec::new(),
            order: order
                .iter()
                .map(|g| Group {
                    group: g
                        .iter()
                        .map(|(id, optional)| GroupEntry {
                            id: id.to_string(),
                            version: String::new(),
                            optional: *optional,
                        })
                        .collect(),
                })
                .collect(),
            dir: PathBuf::from(format!("/bps/{id}")),
        }
    }

    fn names(groups: &[Vec<Member>]) -> Vec<String> {
        groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|m| format!("{}{}", m.bp.info.id, if m.optional { "?" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    #[test]
    fn composites_expand_in_order_first_varying_slowest() {
        let mut index = Index::default();
        for id in ["a", "b", "x", "y", "p", "q"] {
            index.add(bp(id, "1", &[]));
        }
        let c1 = index.add(bp("c1", "1", &[&[("x", false)], &[("y", true)]]));
        let c2 = index.add(bp("c2", "1", &[&[("p", false)], &[("q", false)]]));
        let a = index.find(&GroupEntry { id: "a".into(), ..Default::default() }, "test").unwrap();
        let groups = expand(&[(a, false), (c1, false), (c2, false)], &index).unwrap();
        assert_eq!(names(&groups), ["a,x,p", "a,x,q", "a,y?,p", "a,y?,q"]);
    }

    #[test]
    fn optional_composite_makes_children_optional_and_may_be_left_out() {
        let mut index = Index::default();
        index.add(bp("x", "1", &[]));
        index.add(bp("b", "1", &[]));
        let c = index.add(bp("c", "1", &[&[("x", false)]]));
        let b = index.find(&GroupEntry { id: "b".into(), ..Default::default() }, "test").unwrap();
        let groups = expand(&[(c, true), (b, false)], &index).unwrap();
        assert_eq!(names(&groups), ["x?,b", "b"]);
    }

    #[test]
    fn nested_composites_and_duplicates() {
        let mut index = Index::default();
        index.add(bp("x", "1", &[]));
        index.add(bp("inner", "1", &[&[("x", false)]]));
        let outer = index.add(bp("outer", "1", &[&[("inner", false), ("x", true)]]));
        let groups = expand(&[(outer, false)], &index).unwrap();
        assert_eq!(names(&groups), ["x"]);
    }

    #[test]
    fn versions_and_missing_buildpacks() {
        let mut index = Index::default();
        index.add(bp("x", "1", &[]));
        index.add(bp("x", "2", &[]));
        let e = |v: &str| GroupEntry { id: "x".into(), version: v.into(), optional: false };
        assert_eq!(index.find(&e("2"), "t").unwrap().info.version, "2");
        let msg = index.find(&e(""), "meta@1").unwrap_err().to_string();
        assert!(msg.contains("without a version") && msg.contains("1, 2"), "{msg}");
        let msg = index.find(&e("3"), "meta@1").unwrap_err().to_string();
        assert!(msg.contains("x@3") && msg.contains("found versions: 1, 2") && msg.contains("meta@1"), "{msg}");
        let msg =
            index.find(&GroupEntry { id: "nope".into(), ..Default::default() }, "meta@1").unwrap_err().to_string();
        assert!(msg.contains("names buildpack nope, which is not in --buildpacks-dir"), "{msg}");
    }

    #[test]
    fn cycles_are_refused() {
        let mut index = Index::default();
        let c = index.add(bp("loop", "1", &[&[("loop", false)]]));
        let msg = expand(&[(c, false)], &index).unwrap_err().to_string();
        assert!(msg.contains("nest deeper"), "{msg}");
    }

    #[test]
    fn scans_flat_and_lifecycle_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, id: &str, v: &str| {
            let d = dir.path().join(rel);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(DESCRIPTOR), format!("api = \"0.10\"\n[buildpack]\nid = \"{id}\"\nversion = \"{v}\"\n"))
                .unwrap();
        };
        write("node", "acme/node", "1.0");
        write("acme_py/2.0", "acme/py", "2.0");
        let mut index = Index::default();
        index.add_dir(dir.path()).unwrap();
        index.find(&GroupEntry { id: "acme/node".into(), ..Default::default() }, "t").unwrap();
        // A broken neighbour: an error for add_dir, skipped (and returned) by add_dir_lenient.
        fs::create_dir_all(dir.path().join("old")).unwrap();
        fs::write(
            dir.path().join("old").join(DESCRIPTOR),
            "api = \"0.4\"\n[buildpack]\nid = \"old\"\nversion = \"1\"\n",
        )
        .unwrap();
        assert!(Index::default().add_dir(dir.path()).unwrap_err().to_string().contains("0.4"));
        let mut lenient = Index::default();
        let skipped = lenient.add_dir_lenient(dir.path());
        assert_eq!(skipped.len(), 1);
        lenient.find(&GroupEntry { id: "acme/node".into(), ..Default::default() }, "t").unwrap();
        index.find(&GroupEntry { id: "acme/py".into(), version: "2.0".into(), optional: false }, "t").unwrap();
    }
}
