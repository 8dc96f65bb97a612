//! Build script: records which source revision the binary was built from, for
//! `imgforge version`.
//!
//! The revision is `$IMGFORGE_GIT_REVISION` when set (for packagers building from a
//! tarball who know it), else what git says about the checkout whose top level this crate
//! is, else `unknown` (a tarball, or no git on the machine). It never fails the build.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=IMGFORGE_GIT_REVISION");
    let revision = match std::env::var("IMGFORGE_GIT_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        // only this checkout's own git: a tarball unpacked inside another repository is not it
        _ if git(&["rev-parse", "--show-toplevel"]).map(std::path::PathBuf::from)
            != std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).ok() =>
        {
            "unknown".to_string()
        }
        _ => {
            // HEAD moves on commit and checkout; its reflog is rewritten both times, in a
            // worktree too (both live in the checkout's own git directory)
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                for f in ["HEAD", "logs/HEAD"] {
                    let p = Path::new(&dir).join(f);
                    if p.exists() {
                        println!("cargo:rerun-if-changed={}", p.display());
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=IMGFORGE_GIT_REVISION={revision}");
}
