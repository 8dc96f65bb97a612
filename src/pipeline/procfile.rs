//! Procfile: `type: command` lines, as Heroku reads them.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Procfile line {line}: {why}")]
pub struct ProcfileError {
    pub line: usize,
    pub why: String,
}

/// A valid process type name: safe as a file name and as a command-line word.
pub fn valid_process_type(t: &str) -> bool {
    !t.is_empty() && t.len() <= 63 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
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
        if !valid_process_type(t) {
            return Err(ProcfileError {
                line,
                why: format!("invalid process type {t:?}: use letters, digits, _ and -"),
            });
        }
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
        assert!(parse("web:\n").unwrap_err().why.contains("no command"));
        assert!(parse("web: a\nweb: b").unwrap_err().why.contains("twice"));
    }

    #[test]
    fn shell_detection() {
        assert_eq!(split_without_shell("/app/server --port 80").unwrap(), ["/app/server", "--port", "80"]);
        assert!(split_without_shell("server --port $PORT").unwrap_err().to_string().contains("variable"));
        assert!(split_without_shell("a && b").is_err());
    }
}
