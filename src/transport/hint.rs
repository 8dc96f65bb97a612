//! What a bare reference that names a local file probably meant.
//!
//! A reference without a transport is a registry name (`hello.tar` is
//! `docker.io/library/hello.tar`), so a forgotten `oci:` or `oci-archive:` turns a path into
//! a registry lookup, or a push, that fails late and far away. When the bare reference is
//! also a path to something that is plainly an image (a layout directory, an image
//! archive) or plainly meant as one (a name ending in `.tar`), this module says which
//! transport was probably meant, so the command can stop before it starts.

use std::fs::File;
use std::path::Path;

use crate::image::reference::ImageRef;

/// Tar entries read before giving up on finding what kind of archive a file is.
const MAX_ENTRIES: usize = 10_000;

/// File name endings that name an archive, never a registry repository anyone means.
const ARCHIVE_ENDINGS: [&str; 5] = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".oci"];

/// For a reference written without a transport, the spellings the user probably meant
/// (`oci:PATH`, `oci-archive:PATH`, `docker-archive:PATH`), or `None` when the reference
/// is an ordinary registry name. Only looks at the file system when `arg` names an
/// existing path; reads at most the tar headers of a file.
pub fn local_alternatives(arg: &str) -> Option<Vec<String>> {
    if arg.contains("://") || arg == "scratch" {
        return None;
    }
    // `NAME:TAG` or a path: the part a file would be named by
    let path = Path::new(arg);
    let meta = std::fs::metadata(path).ok();
    let kinds: Vec<&str> = match meta {
        Some(m) if m.is_dir() && (path.join("index.json").is_file() || path.join("oci-layout").is_file()) => {
            vec!["oci"]
        }
        // an app directory named like its image is common (`imgforge build myapp -t myapp`)
        Some(m) if m.is_dir() => return None,
        Some(m) if m.is_file() => archive_kinds(path)?,
        Some(_) => return None,
        None if ARCHIVE_ENDINGS.iter().any(|e| arg.ends_with(e)) => vec!["oci-archive", "docker-archive"],
        None => return None,
    };
    Some(kinds.into_iter().map(|k| format!("{k}:{arg}")).collect())
}

/// Which archive transports read this file: `oci-archive` when it holds an OCI layout,
/// `docker-archive` when it holds a `manifest.json` (Docker 25 writes both). `None` for
/// anything else, a tar of something else included.
fn archive_kinds(path: &Path) -> Option<Vec<&'static str>> {
    let file = File::open(path).ok()?;
    let mut archive = tar::Archive::new(file);
    let (mut oci, mut docker) = (false, false);
    for entry in archive.entries_with_seek().ok()?.take(MAX_ENTRIES) {
        let entry = entry.ok()?;
        let name = entry.path_bytes();
        let name = name.strip_prefix(b"./").unwrap_or(&name);
        match name {
            b"oci-layout" | b"index.json" => oci = true,
            b"manifest.json" => docker = true,
            _ => {}
        }
        if oci && docker {
            break;
        }
    }
    let kinds: Vec<&str> = [(oci, "oci-archive"), (docker, "docker-archive")]
        .into_iter()
        .filter_map(|(found, kind)| found.then_some(kind))
        .collect();
    (!kinds.is_empty()).then_some(kinds)
}

/// Parses a reference as the command line takes it: the reference grammar, and then, for
/// a bare registry name that is also a local image (or an archive's file name), an error
/// that names the transport the user probably meant. `docker://NAME` always means the
/// registry.
pub fn parse_cli_reference(arg: &str) -> Result<ImageRef, String> {
    let parsed = arg.parse::<ImageRef>();
    // a bare registry name, or something that is no reference at all but exists here
    let bare = match &parsed {
        Ok(r) => matches!(r, ImageRef::Registry(_)) && !arg.starts_with("docker://"),
        Err(_) => Path::new(arg).exists(),
    };
    if bare {
        if let Some(alternatives) = local_alternatives(arg) {
            let meant = alternatives.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" or ");
            let what = match &parsed {
                Ok(r) => format!("a registry image ({r})"),
                Err(_) => "not a valid registry name".to_string(),
            };
            let looks =
                if Path::new(arg).exists() { "names a local image" } else { "looks like an archive's file name" };
            return Err(format!(
                "{arg:?} has no transport, so it is {what}, but it {looks}: did you mean {meant}? \
                 (Write docker://{arg} if you do mean the registry.)"
            ));
        }
    }
    parsed.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tar_with(path: &Path, names: &[&str]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for n in names {
            let mut h = tar::Header::new_ustar();
            h.set_size(2);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, n, &b"{}"[..]).unwrap();
        }
        b.finish().unwrap();
    }

    #[test]
    fn local_images_get_the_transport_they_need() {
        let t = tempfile::tempdir().unwrap();
        let at = |n: &str| t.path().join(n).to_str().unwrap().to_string();
        fs::create_dir(t.path().join("layout")).unwrap();
        fs::write(t.path().join("layout/index.json"), "{}").unwrap();
        fs::create_dir(t.path().join("app")).unwrap();
        tar_with(&t.path().join("oci.tar"), &["oci-layout", "index.json", "blobs/sha256/x"]);
        tar_with(&t.path().join("docker.tar"), &["abc.json", "abc/layer.tar", "manifest.json"]);
        tar_with(&t.path().join("both.tar"), &["./index.json", "./manifest.json"]);
        tar_with(&t.path().join("other.tar"), &["README"]);
        fs::write(t.path().join("notatar"), "hello").unwrap();

        assert_eq!(local_alternatives(&at("layout")), Some(vec![format!("oci:{}", at("layout"))]));
        assert_eq!(local_alternatives(&at("oci.tar")), Some(vec![format!("oci-archive:{}", at("oci.tar"))]));
        assert_eq!(local_alternatives(&at("docker.tar")), Some(vec![format!("docker-archive:{}", at("docker.tar"))]));
        assert_eq!(local_alternatives(&at("both.tar")).unwrap().len(), 2);
        assert_eq!(local_alternatives(&at("app")), None, "a plain directory is not an image");
        assert_eq!(local_alternatives(&at("other.tar")), None);
        assert_eq!(local_alternatives(&at("notatar")), None);
        // not there (yet): the file name decides
        assert_eq!(
            local_alternatives("out.tar"),
            Some(vec!["oci-archive:out.tar".into(), "docker-archive:out.tar".into()])
        );
        assert_eq!(local_alternatives("no/such/thing"), None);
        assert_eq!(local_alternatives("busybox:1.36"), None);
    }

    #[test]
    fn cli_references_stop_at_a_forgotten_transport() {
        let e = parse_cli_reference("out.tar").unwrap_err();
        assert!(e.contains("did you mean `oci-archive:out.tar` or `docker-archive:out.tar`"), "{e}");
        assert!(e.contains("docker.io/library/out.tar"), "{e}");
        assert!(matches!(parse_cli_reference("docker://out.tar"), Ok(ImageRef::Registry(_))));
        assert!(matches!(parse_cli_reference("oci-archive:out.tar"), Ok(ImageRef::OciArchive { .. })));
        assert!(matches!(parse_cli_reference("registry.example.com/app:1"), Ok(ImageRef::Registry(_))));
        assert!(parse_cli_reference("ocii:/x").unwrap_err().contains("unknown transport"));
        assert!(parse_cli_reference("ocii:/x.tar").unwrap_err().contains("unknown transport"));
    }
}
