//! `WWW-Authenticate` challenges and the token flow of the distribution spec: Basic
//! credentials go to the registry itself; for Bearer the registry names a token realm, which
//! is asked for a token with the scopes the operation needs (`repository:NAME:pull,push`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A parsed challenge: scheme (lowercase) and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="https://a/token",service="reg",scope="repository:x:pull"`.
/// Only the first challenge of a header is used (registries send one).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = match h.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim()),
        None => (h, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = rest[start..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut value = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                let ch_len = rest[i..].chars().next().map_or(1, char::len_utf8);
                value.push_str(&rest[i..i + ch_len]);
                i += ch_len;
            }
            i += 1;
        } else {
            let s = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            value = rest[s..i].trim().to_string();
        }
        if !key.is_empty() {
            params.insert(key, value);
        }
    }
    Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
}

/// What the client sends with each request to a registry.
#[derive(Clone, Debug, Default)]
pub enum AuthState {
    /// No challenge seen yet, or the registry asks for none.
    #[default]
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        token: Option<(String, Instant)>,
    },
}

impl AuthState {
    pub fn from_challenge(c: &Challenge) -> AuthState {
        match c.scheme.as_str() {
            "basic" => AuthState::Basic,
            "bearer" => AuthState::Bearer {
                realm: c.params.get("realm").cloned().unwrap_or_default(),
                service: c.params.get("service").cloned(),
                token: None,
            },
            _ => AuthState::None,
        }
    }
}

/// A token that expires within this margin is renewed before use.
pub const RENEW_MARGIN: Duration = Duration::from_secs(10);
/// The lifetime the spec tells clients to assume when the token server gives none.
pub const DEFAULT_TOKEN_LIFETIME: u64 = 60;

/// Merges scopes for one resource into `repository:NAME:a,b` strings, deduplicated.
pub fn merge_scopes(scopes: &[String]) -> Vec<String> {
    let mut by_resource: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in scopes {
        let Some((resource, actions)) = s.rsplit_once(':') else { continue };
        let e = by_resource.entry(resource.to_string()).or_default();
        for a in actions.split(',').filter(|a| !a.is_empty()) {
            if !e.iter().any(|x| x == a) {
                e.push(a.to_string());
            }
        }
    }
    by_resource
        .into_iter()
        .map(|(r, mut a)| {
            a.sort();
            format!("{r}:{}", a.join(","))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!((c.scheme.as_str(), c.params["realm"].as_str()), ("basic", "Registry Realm"));
        assert_eq!(parse_challenge("Basic").unwrap().params.len(), 0);
    }

    #[test]
    fn scopes_merge() {
        let s = merge_scopes(&[
            "repository:app:push".into(),
            "repository:app:pull".into(),
            "repository:base:pull".into(),
            "repository:app:pull".into(),
        ]);
        assert_eq!(s, vec!["repository:app:pull,push", "repository:base:pull"]);
    }
}
