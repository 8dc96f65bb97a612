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

use std::collections::BTreeMap;
use std::io::Write;

use imgforge_layers::{Owner, TarWriter};

pub const LAUNCHER_PATH: &str = "/imgforge/launch";

pub const LAUNCHER: &str = r#"#!/bin/sh
# imgforge launcher: IMAGE runs the default process, IMAGE TYPE [ARGS] runs process TYPE,
# IMAGE COMMAND [ARGS] runs COMMAND. Process commands live in /imgforge/processes/TYPE.
for imgforge_profile in .profile.d/*.sh; do
  if [ -f "$imgforge_profile" ]; then . "./$imgforge_profile"; fi
done
unset imgforge_profile
if [ "$#" -eq 0 ]; then
  echo "imgforge: no process to run: the image defines none; pass a command" >&2
  exit 64
fi
case "$1" in
  *[!A-Za-z0-9_-]*) ;;
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

/// Writes the launch layer's entries (canonical order) into `tar`.
pub fn write_launch_layer<W: Write>(
    tar: &mut TarWriter<W>,
    processes: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let root = Owner { uid: 0, gid: 0 };
    tar.dir(b"imgforge", 0o755, root)?;
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
