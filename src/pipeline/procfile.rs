//! Procfile: `type: command` lines, as Heroku reads them.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Procfile line {line}: {why}")]
pub struct ProcfileError {
    pub line: usize,
    pub why: String,
}

/// The longest process type name: it becomes a file name (`/imgforge/processes/<type>`),
/// which a file system may cap at 255 bytes, and a word users type.
pub const MAX_PROCESS_TYPE: usize = 63;

/// The one rule for process type names, whatever declares them (Procfile, a Heroku
/// buildpack's `bin/release`, a CNB `launch.toml`): 1 to 63 of `[A-Za-z0-9_.-]`, not
/// starting with `.` or `-`. Safe as a file name (never `.`, `..` or hidden) and as a
/// command-line word (never an option). `Err` says what is wrong, for the caller to
/// name the source.
pub fn check_process_type(t: &str) -> Result<(), String> {
    let rule = "names are 1 to 63 letters, digits, '_', '-' and '.', not starting with '.' or '-'";
    let shown = if t.chars().count() > 80 {
        format!("{:?}…", t.chars().take(40).collect::<String>())
    } else {
        format!("{t:?}")
    };
    if t.is_empty() || t.len() > MAX_PROCESS_TYPE {
        return Err(format!("invalid process type {shown} ({} bytes): {rule}", t.len()));
    }
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
    if !t.bytes().all(ok_char) || t.starts_with(['.', '-']) {
        return Err(format!("invalid process type {shown}: {rule}"));
    }
    Ok(())
}

/// Parses a Procfile. Blank lines and `#` comments are skipped; a repeated type is an error
/// (Heroku keeps the last silently; a mistake is likelier than intent).
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, ProcfileError> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (t, cmd) =
            l.split_once(':').ok_or_else(|| ProcfileError { line, why: "expected `type: command`".into() })?;
        let (t, cmd) = (t.trim(), cmd.trim());
        check_process_type(t).map_err(|why| ProcfileError { line, why })?;
        if cmd.is_empty() {
            return Err(ProcfileError { line, why: format!("process {t:?} has no command") });
        }
        if out.insert(t.to_string(), cmd.to_string()).is_some() {
            return Err(ProcfileError { line, why: format!("process {t:?} is defined twice") });
        }
    }
    Ok(out)
}

/// What makes a command need a shell.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("it uses {what} (`{char}`)")]
pub struct NeedsShell {
    pub what: &'static str,
    pub char: char,
}

/// Splits a command into words when it needs no shell; `Err` says what needs one.
pub fn split_without_shell(cmd: &str) -> Result<Vec<String>, NeedsShell> {
    const SHELL: &[(char, &str)] = &[
        ('$', "variable expansion"),
        ('`', "command substitution"),
        ('|', "a pipe"),
        ('&', "`&`/`&&`"),
        (';', "`;`"),
        ('<', "redirection"),
        ('>', "redirection"),
        ('*', "a glob"),
        ('?', "a glob"),
        ('(', "a subshell"),
        ('~', "tilde expansion"),
        ('\'', "quoting"),
        ('"', "quoting"),
        ('\\', "escaping"),
    ];
    if let Some((c, what)) = SHELL.iter().find(|(c, _)| cmd.contains(*c)) {
        return Err(NeedsShell { what, char: *c });
    }
    Ok(cmd.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heroku_procfiles() {
        let p = parse("web: gunicorn app:app --bind 0.0.0.0:$PORT\n# comment\n\nworker:  python worker.py \n").unwrap();
        assert_eq!(p["web"], "gunicorn app:app --bind 0.0.0.0:$PORT");
        assert_eq!(p["worker"], "python worker.py");
        assert_eq!(parse("web gunicorn").unwrap_err().line, 1);
        assert!(parse("we b: x").unwrap_err().why.contains("invalid process type"));
        assert!(parse("../x: y").is_err());
        assert!(parse(&format!("{}: y", "a".repeat(64))).unwrap_err().why.contains("64 bytes"));
        assert_eq!(parse("web.v2: y").unwrap()["web.v2"], "y");
        assert!(parse("web:\n").unwrap_err().why.contains("no command"));
        assert!(parse("web: a\nweb: b").unwrap_err().why.contains("twice"));
    }

    #[test]
    fn one_rule_for_process_types() {
        for ok in ["web", "worker_2", "a-b", "release.v1", "_x", "W", &"a".repeat(63)] {
            assert_eq!(check_process_type(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(64);
        let huge = "b".repeat(300);
        for bad in ["", ".", "..", ".hidden", "-x", "a b", "a/b", "../x", "ünï", "a\nb", "a:b", &long, &huge] {
            let why = check_process_type(bad).unwrap_err();
            assert!(why.contains("names are 1 to 63"), "{bad:?}: {why}");
            assert!(why.len() < 200, "a long name is shortened in the message: {why}");
        }
    }

    #[test]
    fn shell_detection() {
        assert_eq!(split_without_shell("/app/server --port 80").unwrap(), ["/app/server", "--port", "80"]);
        assert!(split_without_shell("server --port $PORT").unwrap_err().to_string().contains("variable"));
        assert!(split_without_shell("a && b").is_err());
    }
}
