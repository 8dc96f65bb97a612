//! Running another architecture's programs: user-mode emulation (qemu-user) through the
//! kernel's binfmt_misc, as buildah and BuildKit do.
//!
//! A build for a foreign platform runs its steps in the sandbox on that platform's build
//! image; the kernel hands each foreign ELF binary to the interpreter registered for its
//! header. imgforge needs nothing inside the build image for that only when the
//! interpreter is registered with the `F` (fix-binary) flag: the kernel opens it at
//! registration, so it works after `pivot_root` into any root file system and in a user
//! namespace. [`check`] finds such a registration before any work is done, and its error
//! says how to make one.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::image::manifest::Platform;

/// Where the kernel lists its binfmt_misc registrations.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// One binfmt_misc registration (a file of [`BINFMT_MISC`] other than `register` and
/// `status`), as the kernel prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub enabled: bool,
    pub interpreter: PathBuf,
    /// The flag letters (`P`, `O`, `C`, `F`).
    pub flags: String,
    pub offset: usize,
    pub magic: Vec<u8>,
    pub mask: Vec<u8>,
}

impl Entry {
    /// Parses an entry's text; `None` for one that matches by file name extension, or that
    /// is not an entry at all.
    pub fn parse(name: &str, text: &str) -> Option<Entry> {
        let mut e = Entry {
            name: name.to_string(),
            enabled: false,
            interpreter: PathBuf::new(),
            flags: String::new(),
            offset: 0,
            magic: Vec::new(),
            mask: Vec::new(),
        };
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "enabled" => e.enabled = true,
                "disabled" => e.enabled = false,
                "interpreter" => e.interpreter = PathBuf::from(value),
                "flags:" => e.flags = value.trim().to_string(),
                "offset" => e.offset = value.trim().parse().ok()?,
                "magic" => e.magic = hex::decode(value.trim()).ok()?,
                "mask" => e.mask = hex::decode(value.trim()).ok()?,
                "extension" => return None,
                _ => {}
            }
        }
        (!e.magic.is_empty() && e.interpreter.is_absolute()).then_some(e)
    }

    /// Whether the kernel would hand a file that starts with `header` to this interpreter.
    pub fn matches(&self, header: &[u8]) -> bool {
        let Some(window) = header.get(self.offset..self.offset + self.magic.len()) else { return false };
        window.iter().zip(&self.magic).enumerate().all(|(i, (h, m))| {
            let mask = self.mask.get(i).copied().unwrap_or(0xff);
            h & mask == m & mask
        })
    }

    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }
}

/// The ELF machine and byte order of an architecture (GOARCH names, as platforms use).
fn elf_machine(architecture: &str) -> Option<(u16, bool)> {
    // (e_machine, 64-bit); all little-endian but s390x
    Some(match architecture {
        "amd64" => (0x3e, true),
        "arm64" => (0xb7, true),
        "arm" => (0x28, false),
        "386" => (0x03, false),
        "ppc64le" => (0x15, true),
        "riscv64" => (0xf3, true),
        "s390x" => (0x16, true),
        _ => return None,
    })
}

/// The first 20 bytes of an executable for `architecture`, as binfmt_misc sees them.
pub fn elf_header(architecture: &str) -> Option<[u8; 20]> {
    let (machine, is64) = elf_machine(architecture)?;
    let big_endian = architecture == "s390x";
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = if is64 { 2 } else { 1 };
    h[5] = if big_endian { 2 } else { 1 };
    h[6] = 1;
    let (e_type, e_machine) = if big_endian {
        (2u16.to_be_bytes(), machine.to_be_bytes())
    } else {
        (2u16.to_le_bytes(), machine.to_le_bytes())
    };
    h[16..18].copy_from_slice(&e_type);
    h[18..20].copy_from_slice(&e_machine);
    Some(h)
}

/// qemu's name for an architecture (the `qemu-NAME` of its binary and binfmt entry).
pub fn qemu_name(architecture: &str) -> &str {
    match architecture {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i386",
        other => other,
    }
}

/// How a platform's programs run here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emulation {
    /// This machine runs them.
    Native,
    /// Through this binfmt_misc registration (with the F flag).
    Interpreter(Entry),
}

#[derive(Debug, PartialEq, Eq)]
pub struct EmulationError {
    pub platform: String,
    pub host: String,
    pub kind: EmulationErrorKind,
}

#[derive(Debug, PartialEq, Eq)]
pub enum EmulationErrorKind {
    /// An architecture imgforge knows no ELF header for.
    Unknown,
    /// binfmt_misc is not mounted (or not readable).
    NoBinfmtMisc,
    /// No enabled registration matches the architecture's executables.
    NotRegistered,
    /// One matches, but without the F flag: its interpreter would be looked up inside the
    /// build image.
    NoFixBinary(String),
}

impl fmt::Display for EmulationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arch = self.platform.split('/').nth(1).unwrap_or("");
        let q = qemu_name(arch);
        let how = format!(
            "To enable one (as root, once per boot), on Debian or Ubuntu: apt-get install qemu-user-static, then \
             `cat /usr/lib/binfmt.d/qemu-{q}.conf > {BINFMT_MISC}/register` (if {BINFMT_MISC} is empty, first \
             `mount -t binfmt_misc binfmt_misc {BINFMT_MISC}`); the registration must have the F (fix-binary) flag, \
             which Debian's qemu-user-static file sets"
        );
        match &self.kind {
            EmulationErrorKind::Unknown => write!(
                f,
                "cannot run {} programs on this {} machine: imgforge knows no emulation for architecture {arch:?}",
                self.platform, self.host
            ),
            EmulationErrorKind::NoBinfmtMisc => write!(
                f,
                "cannot run {} programs on this {} machine: binfmt_misc is not mounted at {BINFMT_MISC}, so no \
                 emulator can be registered. {how}",
                self.platform, self.host
            ),
            EmulationErrorKind::NotRegistered => write!(
                f,
                "cannot run {} programs on this {} machine: no interpreter for them (qemu-{q}) is registered in \
                 binfmt_misc. {how}",
                self.platform, self.host
            ),
            EmulationErrorKind::NoFixBinary(name) => write!(
                f,
                "cannot run {} programs on this {} machine: binfmt_misc entry {name:?} runs them, but without the F \
                 (fix-binary) flag, so its interpreter would have to exist inside the build image. Re-register it \
                 with F (as root: `echo -1 > {BINFMT_MISC}/{name}`, then register again). {how}",
                self.platform, self.host
            ),
        }
    }
}

impl std::error::Error for EmulationError {}

/// How `platform`'s programs can run on this machine, looking in [`BINFMT_MISC`].
pub fn check(platform: &Platform) -> Result<Emulation, EmulationError> {
    check_in(platform, &Platform::host(), Path::new(BINFMT_MISC))
}

/// [`check`] against another host platform and binfmt_misc directory (for tests).
pub fn check_in(platform: &Platform, host: &Platform, dir: &Path) -> Result<Emulation, EmulationError> {
    if platform.os == host.os && platform.architecture == host.architecture {
        return Ok(Emulation::Native);
    }
    let err = |kind| EmulationError { platform: platform.to_string(), host: host.to_string(), kind };
    let header = elf_header(&platform.architecture).ok_or_else(|| err(EmulationErrorKind::Unknown))?;
    if platform.os != "linux" {
        return Err(err(EmulationErrorKind::Unknown));
    }
    let status = fs::read_to_string(dir.join("status")).map_err(|_| err(EmulationErrorKind::NoBinfmtMisc))?;
    if status.trim() != "enabled" {
        return Err(err(EmulationErrorKind::NotRegistered));
    }
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|_| err(EmulationErrorKind::NoBinfmtMisc))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "register" && n != "status")
        .collect();
    names.sort();
    let mut without_f = None;
    for name in names {
        // entries are small kernel files; a read error means it went away meanwhile
        let Ok(text) = fs::read_to_string(dir.join(&name)) else { continue };
        let Some(entry) = Entry::parse(&name, &text) else { continue };
        if !entry.enabled || !entry.matches(&header) {
            continue;
        }
        if entry.fix_binary() {
            return Ok(Emulation::Interpreter(entry));
        }
        without_f.get_or_insert(name);
    }
    Err(err(without_f.map_or(EmulationErrorKind::NotRegistered, EmulationErrorKind::NoFixBinary)))
}

/// The variables that tell a build step which platform it builds for and on, by the names
/// BuildKit gives Dockerfile `ARG`s (`TARGETPLATFORM`, `TARGETOS`, `TARGETARCH`,
/// `TARGETVARIANT`, and `BUILD*` for the machine imgforge runs on), which Heroku buildpacks
/// and Dockerfile steps get, plus the Cloud Native Buildpacks platform API's
/// `CNB_TARGET_OS`, `CNB_TARGET_ARCH` and `CNB_TARGET_ARCH_VARIANT`. A missing variant is
/// an empty value, as BuildKit gives it.
pub fn target_env(target: &Platform, build: &Platform) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        env.push((format!("{prefix}PLATFORM"), p.to_string()));
        env.push((format!("{prefix}OS"), p.os.clone()));
        env.push((format!("{prefix}ARCH"), p.architecture.clone()));
        env.push((format!("{prefix}VARIANT"), p.variant.clone().unwrap_or_default()));
    }
    env.push(("CNB_TARGET_OS".into(), target.os.clone()));
    env.push(("CNB_TARGET_ARCH".into(), target.architecture.clone()));
    if let Some(v) = &target.variant {
        env.push(("CNB_TARGET_ARCH_VARIANT".into(), v.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/sys/fs/binfmt_misc/qemu-aarch64 as Debian 12's qemu-user-static registers it.
    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n\
        magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn parses_a_qemu_entry_and_matches_only_its_architecture() {
        let e = Entry::parse("qemu-aarch64", AARCH64).unwrap();
        assert!(e.enabled && e.fix_binary());
        assert_eq!(e.interpreter, Path::new("/usr/libexec/qemu-binfmt/aarch64-binfmt-P"));
        assert_eq!(e.magic.len(), 20);
        assert!(e.matches(&elf_header("arm64").unwrap()));
        for other in ["amd64", "arm", "s390x", "riscv64"] {
            assert!(!e.matches(&elf_header(other).unwrap()), "{other}");
        }
        // a shared object (e_type 3) matches too: qemu's mask allows both
        let mut so = elf_header("arm64").unwrap();
        so[16] = 3;
        assert!(e.matches(&so));
        assert!(!e.matches(&so[..10]), "a short header never matches");
    }

    #[test]
    fn extension_entries_and_junk_are_not_entries() {
        assert_eq!(Entry::parse("jar", "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n"), None);
        assert_eq!(Entry::parse("x", "enabled\ninterpreter /q\nflags: F\noffset 0\nmagic zz\n"), None);
        assert_eq!(Entry::parse("x", "enabled\ninterpreter relative\nflags: F\noffset 0\nmagic 7f\n"), None);
        assert_eq!(Entry::parse("x", ""), None);
        let disabled = Entry::parse("qemu-aarch64", &AARCH64.replacen("enabled", "disabled", 1)).unwrap();
        assert!(!disabled.enabled);
    }

    #[test]
    fn target_env_names_the_target_and_the_build_platform() {
        let env = target_env(&p("linux/arm64/v8"), &p("linux/amd64"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("TARGETPLATFORM"), Some("linux/arm64/v8"));
        assert_eq!(get("TARGETARCH"), Some("arm64"));
        assert_eq!(get("TARGETVARIANT"), Some("v8"));
        assert_eq!(get("BUILDPLATFORM"), Some("linux/amd64"));
        assert_eq!(get("BUILDVARIANT"), Some(""));
        assert_eq!(get("CNB_TARGET_ARCH"), Some("arm64"));
        assert_eq!(get("CNB_TARGET_ARCH_VARIANT"), Some("v8"));
        let plain = target_env(&p("linux/amd64"), &p("linux/amd64"));
        assert!(!plain.iter().any(|(n, _)| n == "CNB_TARGET_ARCH_VARIANT"));
    }

    fn binfmt_dir(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("status"), "enabled\n").unwrap();
        fs::write(d.path().join("register"), "").unwrap();
        for (name, text) in entries {
            fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn check_finds_the_registration_or_says_how_to_make_one() {
        let amd64 = p("linux/amd64");
        let none = tempfile::tempdir().unwrap();
        assert_eq!(check_in(&amd64, &amd64, none.path()), Ok(Emulation::Native));

        let d = binfmt_dir(&[
            ("python3.11", "enabled\ninterpreter /usr/bin/python3.11\nflags: \noffset 0\nmagic a70d0d0a\n"),
            ("qemu-aarch64", AARCH64),
        ]);
        let Ok(Emulation::Interpreter(e)) = check_in(&p("linux/arm64/v8"), &amd64, d.path()) else { panic!("found") };
        assert_eq!(e.name, "qemu-aarch64");

        let err = check_in(&p("linux/s390x"), &amd64, d.path()).unwrap_err();
        assert_eq!(err.kind, EmulationErrorKind::NotRegistered);
        let text = err.to_string();
        assert!(
            text.contains("linux/s390x")
                && text.contains("qemu-s390x")
                && text.contains("apt-get install qemu-user-static"),
            "{text}"
        );
        assert!(text.contains("/usr/lib/binfmt.d/qemu-s390x.conf > /proc/sys/fs/binfmt_misc/register"), "{text}");

        let no_f = binfmt_dir(&[("qemu-aarch64", &AARCH64.replace("flags: POF", "flags: OC"))]);
        let err = check_in(&p("linux/arm64"), &amd64, no_f.path()).unwrap_err();
        assert_eq!(err.kind, EmulationErrorKind::NoFixBinary("qemu-aarch64".into()));
        assert!(err.to_string().contains("F (fix-binary)"), "{err}");

        let err = check_in(&p("linux/arm64"), &amd64, &none.path().join("missing")).unwrap_err();
        assert_eq!(err.kind, EmulationErrorKind::NoBinfmtMisc);
        assert!(err.to_string().contains("mount -t binfmt_misc"), "{err}");

        let err = check_in(&p("linux/mips64"), &amd64, d.path()).unwrap_err();
        assert_eq!(err.kind, EmulationErrorKind::Unknown);
    }
}
