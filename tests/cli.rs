//! The command line about itself: shell completions, the man page, `imgforge version`,
//! and `NO_COLOR`.

mod common;

use std::process::Command;

use common::*;

fn imgforge_stdout(args: &[&str]) -> String {
    let mut c = imgforge();
    c.args(args);
    stdout_str(&run_ok(&mut c))
}

#[test]
fn completions_for_bash_zsh_and_fish_know_the_subcommands_and_flags() {
    for (shell, marker) in [("bash", "_imgforge()"), ("zsh", "#compdef imgforge"), ("fish", "complete -c imgforge")] {
        let script = imgforge_stdout(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        // fish spells a long option `-l base`
        let flag = |f: &str| if shell == "fish" { format!("-l {f}") } else { format!("--{f}") };
        for word in ["build".to_string(), "inspect".into(), "copy".into(), flag("base"), flag("buildpack")] {
            assert!(script.contains(&word), "{shell} completion lacks {word}");
        }
    }
    // bash can load what it printed
    if let Some(bash) = find_in_path("bash") {
        let script = imgforge_stdout(&["completions", "bash"]);
        let mut c = Command::new(bash);
        c.args(["-c", "eval \"$1\" && complete -p imgforge", "sh", &script]);
        let out = run_ok(&mut c);
        assert!(stdout_str(&out).contains("imgforge"), "{}", report(&c, &out));
    }
    let mut c = imgforge();
    c.args(["completions", "tcsh-or-so"]);
    assert_eq!(run(&mut c).status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_page_is_roff_made_from_the_flags() {
    let page = imgforge_stdout(&["man"]);
    assert!(page.contains(".TH imgforge 1"), "{}", &page[..page.len().min(300)]);
    for word in ["build", "inspect", "copy", "completions"] {
        assert!(page.contains(word), "man page lacks {word}");
    }
    // groff renders it without complaint, where groff is installed
    if let Some(groff) = find_in_path("groff") {
        let dir = TestDir::new();
        let file = dir.write("imgforge.1", &page);
        let mut c = Command::new(groff);
        c.args(["-man", "-Tutf8", "-ww"]).arg(&file);
        let out = run_ok(&mut c);
        assert!(stdout_str(&out).starts_with("imgforge(1)"), "{}", report(&c, &out));
        assert!(stderr_str(&out).is_empty(), "groff warns\n{}", report(&c, &out));
    }
}

#[test]
fn version_names_the_revision_and_the_features() {
    let text = imgforge_stdout(&["version"]);
    assert!(text.starts_with(&format!("imgforge {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    let revision = text.lines().find_map(|l| l.strip_prefix("revision: ")).expect("a revision line");
    // In a git checkout, the commit it was built from; from a tarball, "unknown".
    let mut git = Command::new("git");
    git.args(["rev-parse", "--short=12", "HEAD"]).current_dir(repo_root());
    match git.output() {
        Ok(o) if o.status.success() => assert_eq!(revision, String::from_utf8_lossy(&o.stdout).trim(), "{text}"),
        _ => assert_eq!(revision, "unknown", "{text}"),
    }
    for feature in ["oci-archive", "docker-archive", "gzip", "zstd", "cnb", "userns"] {
        assert!(text.contains(feature), "version should list {feature}: {text}");
    }
    let long = imgforge_stdout(&["--version"]);
    assert!(long.contains(revision), "--version: {long}");
}

#[test]
fn no_color_turns_colour_off() {
    let run_with = |no_color: Option<&str>| {
        let mut c = imgforge();
        // CLICOLOR_FORCE: colour even though stderr is a pipe here, unless NO_COLOR says no
        c.env("CLICOLOR_FORCE", "1").args(["build", "--no-such-flag"]);
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = run(&mut c);
        assert_eq!(out.status.code(), Some(2), "{}", report(&c, &out));
        stderr_str(&out)
    };
    assert!(run_with(None).contains('\x1b'), "without NO_COLOR the forced colour shows");
    let plain = run_with(Some("1"));
    assert!(!plain.contains('\x1b'), "NO_COLOR=1 printed escape sequences: {plain:?}");
    assert!(plain.contains("--no-such-flag"), "{plain}");
}
