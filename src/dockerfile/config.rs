//! The part of an image config a Dockerfile changes, with Docker's JSON names, and the
//! Go-style formatting BuildKit's history entries use.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Docker's `config` object, the keys a Dockerfile sets. It deserialises from a base
/// image's config (`null`s as empty, other keys ignored) and serialises with empty
/// fields left out, as Docker writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable", rename = "OnBuild", skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
}

/// `{}`, the value of `ExposedPorts` and `Volumes` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Docker's `Healthcheck`; durations in nanoseconds, zero fields left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The PATH BuildKit gives `scratch` and `RUN` steps whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl ImageConfig {
    /// What `FROM scratch` starts from (BuildKit's empty image).
    pub fn scratch() -> ImageConfig {
        ImageConfig { env: vec![format!("PATH={DEFAULT_PATH}")], working_dir: "/".into(), ..ImageConfig::default() }
    }

    /// Sets `key=value` in `Env`, in place when the key is there.
    pub fn set_env(&mut self, key: &str, value: &str) {
        set_pair(&mut self.env, key, value);
    }
}

/// Sets `key=value` in a `K=V` list, in place when the key is there.
pub(crate) fn set_pair(list: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match list.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |p| p.0) == key) {
        Some(slot) => *slot = entry,
        None => list.push(entry),
    }
}

/// Go's `strconv.Quote`: `"…"` with `\"`, `\\` and control characters escaped.
pub fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| go_quote(s)).collect::<Vec<_>>().join(" "))
}

/// Go's `%q` of an int: a quoted character, `'\x03'`.
fn go_quote_rune(n: u64) -> String {
    match char::from_u32(n as u32).filter(|_| n <= u64::from(u32::MAX)) {
        Some('\'') => "'\\''".into(),
        Some('\\') => "'\\\\'".into(),
        Some('\x07') => "'\\a'".into(),
        Some('\x08') => "'\\b'".into(),
        Some('\x0c') => "'\\f'".into(),
        Some('\n') => "'\\n'".into(),
        Some('\r') => "'\\r'".into(),
        Some('\t') => "'\\t'".into(),
        Some('\x0b') => "'\\v'".into(),
        Some(c) if (c as u32) < 0x20 || c == '\x7f' => format!("'\\x{:02x}'", c as u32),
        Some(c) => format!("'{c}'"),
        None => format!("%!q(int={n})"),
    }
}

/// Go's `time.Duration.String()`: `0s`, `500ms`, `1m30s`, `1h0m0s`.
pub fn go_duration(ns: u64) -> String {
    fn frac(v: u64, unit: u64) -> String {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
    match ns {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", frac(n, 1_000)),
        n if n < 1_000_000_000 => format!("{}ms", frac(n, 1_000_000)),
        n => {
            let secs = n / 1_000_000_000;
            let (h, m) = (secs / 3600, secs % 3600 / 60);
            let s = frac(n % 60_000_000_000, 1_000_000_000);
            match (h, m) {
                (0, 0) => format!("{s}s"),
                (0, m) => format!("{m}m{s}s"),
                (h, m) => format!("{h}h{m}m{s}s"),
            }
        }
    }
}

/// BuildKit's history text for a health check: Go's `%q` of `*HealthConfig`.
pub fn healthcheck_history(h: &HealthConfig) -> String {
    format!(
        "HEALTHCHECK &{{{} {} {} {} {} {}}}",
        go_quote_list(&h.test),
        go_quote(&go_duration(h.interval)),
        go_quote(&go_duration(h.timeout)),
        go_quote(&go_duration(h.start_period)),
        go_quote(&go_duration(h.start_interval)),
        go_quote_rune(h.retries)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formatting() {
        assert_eq!(
            go_quote_list(&["/bin/sh".into(), "-c".into(), "echo \"hi\"\tthere".into()]),
            r#"["/bin/sh" "-c" "echo \"hi\"\tthere"]"#
        );
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        let h = HealthConfig {
            test: vec!["CMD-SHELL".into(), "curl -f x".into()],
            interval: 5_000_000_000,
            retries: 3,
            ..HealthConfig::default()
        };
        assert_eq!(healthcheck_history(&h), r#"HEALTHCHECK &{["CMD-SHELL" "curl -f x"] "5s" "0s" "0s" "0s" '\x03'}"#);
    }

    #[test]
    fn config_json_round_trip_with_docker_names_and_nulls() {
        let base: ImageConfig = serde_json::from_str(
            r#"{"Env":["PATH=/bin"],"Cmd":null,"Labels":null,"OnBuild":null,"Entrypoint":["/e"],"WorkingDir":"","ArgsEscaped":true,"ExposedPorts":{"80/tcp":{}}}"#,
        )
        .unwrap();
        assert_eq!(base.env, ["PATH=/bin"]);
        assert_eq!((base.cmd.clone(), base.entrypoint.clone()), (None, Some(vec!["/e".to_string()])));
        let mut c = base;
        c.set_env("PATH", "/usr/bin");
        c.set_env("A", "1");
        c.healthcheck = Some(HealthConfig { test: vec!["NONE".into()], ..HealthConfig::default() });
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"ExposedPorts":{"80/tcp":{}},"Env":["PATH=/usr/bin","A=1"],"Entrypoint":["/e"],"Healthcheck":{"Test":["NONE"]}}"#
        );
    }
}
