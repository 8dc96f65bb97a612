//! What a Heroku `bin/release` prints: YAML with `default_process_types` and `config_vars`
//! (`addons` and any other key are ignored).

use std::collections::BTreeMap;

use yaml_rust2::parser::{Event, EventReceiver, Parser};
use yaml_rust2::{Yaml, YamlLoader};

use super::valid_var_name;
use crate::pipeline::procfile::check_process_type;

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Release {
    pub default_process_types: BTreeMap<String, String>,
    pub config_vars: BTreeMap<String, String>,
}

struct AliasCounter(usize);

impl EventReceiver for AliasCounter {
    fn on_event(&mut self, ev: Event) {
        if matches!(ev, Event::Alias(_)) {
            self.0 += 1;
        }
    }
}

/// Why `bin/release` output is refused (the caller names the buildpack).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("invalid YAML ({why}) at line {line_no}: {line:?}")]
    Yaml { why: String, line_no: usize, line: String },
    #[error("YAML aliases (*name) are not supported")]
    Aliases,
    #[error("expected one YAML document, got {0}")]
    Documents(usize),
    #[error("expected a mapping at the top, got {0}")]
    TopLevel(&'static str),
    /// The name breaks the one rule for process types ([`check_process_type`]).
    #[error("default_process_types: {0}")]
    ProcessType(String),
    #[error("config var {0:?}: names are [A-Za-z_][A-Za-z0-9_]*")]
    VarName(String),
    #[error("{what}: expected a mapping, got {kind}")]
    NotMapping { what: &'static str, kind: &'static str },
    #[error("{what}: a key is {kind}, not a name")]
    KeyNotName { what: &'static str, kind: &'static str },
    #[error("{what}: {name}: expected a string, got {kind}")]
    NotString { what: &'static str, name: String, kind: &'static str },
}

/// Parses release output.
pub(crate) fn parse(text: &str) -> Result<Release, ReleaseError> {
    // Aliases are expanded by copying: a few lines can grow into gigabytes. No release
    // output needs them.
    let mut aliases = AliasCounter(0);
    Parser::new_from_str(text).load(&mut aliases, true).map_err(|e| scan_error(text, &e))?;
    if aliases.0 > 0 {
        return Err(ReleaseError::Aliases);
    }
    let docs = YamlLoader::load_from_str(text).map_err(|e| scan_error(text, &e))?;
    let mut out = Release::default();
    let doc = match docs.as_slice() {
        [] => return Ok(out),
        [d] => d,
        _ => return Err(ReleaseError::Documents(docs.len())),
    };
    let map = match doc {
        Yaml::Null => return Ok(out),
        Yaml::Hash(h) => h,
        other => return Err(ReleaseError::TopLevel(kind(other))),
    };
    for (key, value) in map {
        match key.as_str() {
            Some("default_process_types") => {
                for (name, command) in mapping("default_process_types", value)? {
                    check_process_type(&name).map_err(ReleaseError::ProcessType)?;
                    out.default_process_types.insert(name, command);
                }
            }
            Some("config_vars") => {
                for (name, v) in mapping("config_vars", value)? {
                    if !valid_var_name(&name) {
                        return Err(ReleaseError::VarName(name));
                    }
                    out.config_vars.insert(name, v);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A mapping of names to scalars (numbers and booleans stringified, null as ""); a null
/// mapping is empty.
fn mapping(what: &'static str, value: &Yaml) -> Result<Vec<(String, String)>, ReleaseError> {
    let h = match value {
        Yaml::Null => return Ok(Vec::new()),
        Yaml::Hash(h) => h,
        other => return Err(ReleaseError::NotMapping { what, kind: kind(other) }),
    };
    let mut out = Vec::new();
    for (k, v) in h {
        let name = scalar(k).ok_or_else(|| ReleaseError::KeyNotName { what, kind: kind(k) })?;
        let v = match v {
            Yaml::Null => String::new(),
            v => scalar(v).ok_or_else(|| ReleaseError::NotString { what, name: name.clone(), kind: kind(v) })?,
        };
        out.push((name, v));
    }
    Ok(out)
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(y: &Yaml) -> &'static str {
    match y {
        Yaml::Real(_) => "a number",
        Yaml::Integer(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Array(_) => "a list",
        Yaml::Hash(_) => "a mapping",
        Yaml::Alias(_) => "an alias",
        Yaml::Null => "null",
        Yaml::BadValue => "an invalid value",
    }
}

fn scan_error(text: &str, e: &yaml_rust2::ScanError) -> ReleaseError {
    let line_no = e.marker().line();
    let line = text.lines().nth(line_no.saturating_sub(1)).unwrap_or("").to_string();
    ReleaseError::Yaml { why: e.info().to_string(), line_no, line }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_and_config_vars() {
        let r = parse(
            "---\naddons:\n  - heroku-postgresql\nconfig_vars:\n  PATH: /app/bin:/usr/bin\n  WORKERS: 4\n  \
             DEBUG: false\n  RATIO: 0.5\n  EMPTY:\ndefault_process_types:\n  web: bin/start -p $PORT\n  \
             worker-1: \"rake jobs:work\"\n",
        )
        .unwrap();
        let m = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(r.default_process_types, m(&[("web", "bin/start -p $PORT"), ("worker-1", "rake jobs:work")]));
        assert_eq!(
            r.config_vars,
            m(&[("PATH", "/app/bin:/usr/bin"), ("WORKERS", "4"), ("DEBUG", "false"), ("RATIO", "0.5"), ("EMPTY", "")])
        );
    }

    #[test]
    fn empty_and_null() {
        assert_eq!(parse("").unwrap(), Release::default());
        assert_eq!(parse("---\n").unwrap(), Release::default());
        assert_eq!(parse("default_process_types:\nconfig_vars: ~\n").unwrap(), Release::default());
    }

    #[test]
    fn errors() {
        let e = parse("default_process_types:\n  web: ok\n   bad: [unclosed\n").unwrap_err().to_string();
        assert!(e.contains("invalid YAML") && e.contains("line 3"), "{e}");
        let e = parse("default_process_types:\n  \"we b\": x\n").unwrap_err().to_string();
        assert!(e.contains("\"we b\""), "{e}");
        // The Procfile's rule, length included: a 300-byte type is no file name.
        for bad in ["..", "-x", &"w".repeat(64), &"w".repeat(300)] {
            let e = parse(&format!("default_process_types:\n  \"{bad}\": x\n")).unwrap_err().to_string();
            assert!(e.contains("default_process_types") && e.contains("names are 1 to 63"), "{bad}: {e}");
        }
        let e = parse("config_vars:\n  1A: x\n").unwrap_err().to_string();
        assert!(e.contains("\"1A\""), "{e}");
        let e = parse("default_process_types: [web]\n").unwrap_err().to_string();
        assert!(e.contains("expected a mapping, got a list"), "{e}");
        let e = parse("config_vars:\n  A: {b: c}\n").unwrap_err().to_string();
        assert!(e.contains("A: expected a string, got a mapping"), "{e}");
        let e = parse("- a\n").unwrap_err().to_string();
        assert!(e.contains("top"), "{e}");
        let e = parse("a: &x [1, 2]\nb: *x\n").unwrap_err().to_string();
        assert!(e.contains("alias"), "{e}");
    }
}
