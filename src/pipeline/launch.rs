//! How a built image starts its processes.
//!
//! With a shell in the base, a small launch layer holds `/imgforge/launch` (a fixed POSIX sh
//! script, the image's entrypoint) and one file per Procfile process in
//! `/imgforge/processes/<type>` holding its command. Commands are data, never spliced
//! into the script, so no quoting can go wrong. The launcher sources `.profile.d/*.sh` from
//! the working directory (name order), then:
//! - no arguments: runs the image's `Cmd`, which is the default process type;
//! - a process type first: runs that process through `/bin/sh -c`, any further arguments
//!   appended to its command;
//! - anything else: runs it as a command, in the same environment.
//!
//! Without a shell, the default process runs directly as `Cmd` and nothing that needs a
//! shell is accepted.
//!
//! Cloud Native Buildpack builds add `/imgforge/env/<type>` (and `/imgforge/env/_` for a
//! command that is not a process): a POSIX sh file the launcher sources first, generated
//! at build time from the launch layers' `bin`, `lib`, `env/`, `env.launch/` and
//! `env.launch/<type>/` (see [`cnb_env_script`]), then their `profile.d` scripts and the
//! app's `.profile`. Every value is single-quoted data, never evaluated.

use std::collections::BTreeMap;
use std::io::Write;

use imgforge_layers::{Owner, TarWriter};

use crate::buildpack::cnb::env::{Action, Change};

pub const LAUNCHER_PATH: &str = "/imgforge/launch";

pub const LAUNCHER: &str = r#"#!/bin/sh
# imgforge launcher: IMAGE runs the default process, IMAGE TYPE [ARGS] runs process TYPE,
# IMAGE COMMAND [ARGS] runs COMMAND. Process commands live in /imgforge/processes/TYPE.
imgforge_env=/imgforge/env/_
case "${1:-}" in
  ''|.|..|*[!A-Za-z0-9_.-]*) ;;
  *) if [ -f "/imgforge/env/$1" ]; then imgforge_env="/imgforge/env/$1"; fi ;;
esac
if [ -f "$imgforge_env" ]; then . "$imgforge_env"; fi
unset imgforge_env
for imgforge_profile in .profile.d/*.sh; do
  if [ -f "$imgforge_profile" ]; then . "./$imgforge_profile"; fi
done
unset imgforge_profile
if [ "$#" -eq 0 ]; then
  echo "imgforge: no process to run: the image defines none; pass a command" >&2
  exit 64
fi
case "$1" in
  .|..|*[!A-Za-z0-9_.-]*) ;;
  *)
    if [ -f "/imgforge/processes/$1" ]; then
      imgforge_cmd=$(cat "/imgforge/processes/$1")
      shift
      exec /bin/sh -c "$imgforge_cmd"' "$@"' sh "$@"
    fi
    ;;
esac
exec "$@"
"#;

/// Writes the launch layer's entries (canonical order) into `tar`: the launcher, one file
/// per process and one env script per name in `env` (CNB builds; empty otherwise).
pub fn write_launch_layer<W: Write>(
    tar: &mut TarWriter<W>,
    processes: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let root = Owner { uid: 0, gid: 0 };
    tar.dir(b"imgforge", 0o755, root)?;
    if !env.is_empty() {
        tar.dir(b"imgforge/env", 0o755, root)?;
        for (name, body) in env {
            let path = format!("imgforge/env/{name}");
            tar.file(path.as_bytes(), 0o644, root, body.len() as u64, &mut body.as_bytes())?;
        }
    }
    tar.file(b"imgforge/launch", 0o755, root, LAUNCHER.len() as u64, &mut LAUNCHER.as_bytes())?;
    tar.dir(b"imgforge/processes", 0o755, root)?;
    for (name, cmd) in processes {
        let body = format!("{cmd}\n");
        tar.file(
            format!("imgforge/processes/{name}").as_bytes(),
            0o644,
            root,
            body.len() as u64,
            &mut body.as_bytes(),
        )?;
    }
    Ok(())
}

/// `'value'` for sh: the value as data, whatever it holds.
pub fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A process's argv as one sh command line (each word quoted); `cd DIR &&` first when it
/// has a working directory.
pub fn sh_command(argv: &[String], shell_script: bool, working_dir: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(d) = working_dir {
        s.push_str(&format!("cd {} && ", sh_quote(d)));
    }
    let words: Vec<String> = if shell_script {
        // The first word is a script (Buildpack API < 0.9): run as it is; the rest are its arguments.
        std::iter::once(argv[0].clone()).chain(argv[1..].iter().map(|a| sh_quote(a))).collect()
    } else {
        argv.iter().map(|a| sh_quote(a)).collect()
    };
    s.push_str(&words.join(" "));
    s
}

/// The env script of one process: `changes` in order (names already validated), then each
/// of `sources` (profile scripts, absolute paths) if it is a file.
pub fn cnb_env_script(changes: &[Change], sources: &[String]) -> String {
    let mut s = String::from("# imgforge: launch environment (generated from the launch layers' env files)\n");
    for c in changes {
        let (n, v, d) = (&c.name, sh_quote(&c.value), sh_quote(&c.delim));
        let line = match c.action {
            Action::Override => format!("export {n}={v}\n"),
            Action::Default => format!("if [ -z \"${{{n}:-}}\" ]; then export {n}={v}; fi\n"),
            Action::Append => {
                format!("if [ -n \"${{{n}:-}}\" ]; then export {n}=\"${{{n}}}\"{d}{v}; else export {n}={v}; fi\n")
            }
            Action::Prepend => {
                format!("if [ -n \"${{{n}:-}}\" ]; then export {n}={v}{d}\"${{{n}}}\"; else export {n}={v}; fi\n")
            }
        };
        s.push_str(&line);
    }
    for p in sources {
        let q = sh_quote(p);
        s.push_str(&format!("if [ -f {q} ]; then . {q}; fi\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn change(name: &str, action: Action, value: &str, delim: &str) -> Change {
        Change { name: name.into(), action, value: value.into(), delim: delim.into() }
    }

    #[test]
    fn env_script_applies_each_action_as_data() {
        let script = cnb_env_script(
            &[
                change("A", Action::Override, "it's $HOME `x`\nline2", ""),
                change("B", Action::Default, "dflt", ""),
                change("C", Action::Default, "no", ""),
                change("D", Action::Append, "tail", ","),
                change("E", Action::Prepend, "/new/bin", ":"),
                change("F", Action::Prepend, "alone", ":"),
            ],
            &["/nonexistent/profile".into()],
        );
        let full = format!("{script}\nprintf '%s|' \"$A\" \"$B\" \"$C\" \"$D\" \"$E\" \"$F\"");
        let out = Command::new("/bin/sh")
            .args(["-c", &full])
            .env_clear()
            .env("C", "keep")
            .env("D", "head")
            .env("E", "/usr/bin")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's $HOME `x`\nline2|dflt|keep|head,tail|/new/bin:/usr/bin|alone|"
        );
    }

    #[test]
    fn commands_quote_every_word() {
        assert_eq!(sh_command(&["node".into(), "a b".into()], false, Some("/w d")), "cd '/w d' && 'node' 'a b'");
        assert_eq!(sh_command(&["echo $X".into(), "it's".into()], true, None), "echo $X 'it'\\''s'");
    }
}
