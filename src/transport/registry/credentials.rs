//! Where registry credentials come from, in the order containers/image and Docker use:
//! `--authfile` or `$REGISTRY_AUTH_FILE`, then `${XDG_RUNTIME_DIR}/containers/auth.json`,
//! then `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. In each file a
//! `credHelpers` entry for the host wins over `auths`, and `credsStore` is asked last.
//! Helpers are `docker-credential-NAME get`, given the server on stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{Map, Value};

use super::RegistryError;

/// A user name and a secret (a password, or a token the registry accepts as one).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
    /// Where they came from, for messages (never the secret itself).
    pub from: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} from {}, secret redacted)", self.username, self.from)
    }
}

/// The spellings of a registry's key in auth files (docker.io has historical ones).
fn keys_for(registry: &str) -> Vec<String> {
    if registry == "docker.io" {
        ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"]
            .map(String::from)
            .to_vec()
    } else {
        vec![registry.to_string()]
    }
}

/// The server name handed to credential helpers.
fn helper_server(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".into()
    } else {
        registry.into()
    }
}

/// A key in `auths` as written by various tools: `host`, `https://host`, `https://host/v1/`.
fn normalise_key(k: &str) -> &str {
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    k.split('/').next().unwrap_or(k)
}

fn env_path(k: &str) -> Option<PathBuf> {
    std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The files read for credentials, in order.
pub fn auth_files(auth_file: Option<&Path>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(f) = auth_file.map(Path::to_path_buf).or_else(|| env_path("REGISTRY_AUTH_FILE")) {
        v.push(f);
    }
    if let Some(d) = env_path("XDG_RUNTIME_DIR") {
        v.push(d.join("containers/auth.json"));
    }
    match env_path("DOCKER_CONFIG") {
        Some(d) => v.push(d.join("config.json")),
        None => {
            if let Some(h) = env_path("HOME") {
                v.push(h.join(".docker/config.json"));
            }
        }
    }
    v
}

/// The file `imgforge login` writes: `--authfile`, `$REGISTRY_AUTH_FILE`,
/// `${XDG_RUNTIME_DIR}/containers/auth.json`, else `~/.docker/config.json`.
pub fn login_file(auth_file: Option<&Path>) -> Option<PathBuf> {
    auth_file
        .map(Path::to_path_buf)
        .or_else(|| env_path("REGISTRY_AUTH_FILE"))
        .or_else(|| env_path("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")))
        .or_else(|| env_path("DOCKER_CONFIG").map(|d| d.join("config.json")))
        .or_else(|| env_path("HOME").map(|h| h.join(".docker/config.json")))
}

fn read_json(path: &Path) -> Result<Option<Map<String, Value>>, RegistryError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RegistryError::Credentials(format!("cannot read {}: {e}", path.display()))),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        _ => Err(RegistryError::Credentials(format!("{} is not a JSON object: fix or remove it", path.display()))),
    }
}

/// Looks up credentials for `registry`; `None` means anonymous.
pub fn lookup(registry: &str, auth_file: Option<&Path>) -> Result<Option<Credentials>, RegistryError> {
    let keys = keys_for(registry);
    for path in auth_files(auth_file) {
        let Some(cfg) = read_json(&path)? else { continue };
        let from = path.display().to_string();
        if let Some(Value::Object(helpers)) = cfg.get("credHelpers") {
            if let Some(Value::String(h)) = keys.iter().find_map(|k| helpers.get(k)) {
                if let Some(c) = run_helper(h, registry)? {
                    return Ok(Some(c));
                }
            }
        }
        if let Some(Value::Object(auths)) = cfg.get("auths") {
            let entry = auths.iter().find(|(k, _)| keys.iter().any(|want| normalise_key(k) == normalise_key(want)));
            if let Some((_, Value::Object(e))) = entry {
                if let Some(c) = decode_entry(e, &from)? {
                    return Ok(Some(c));
                }
            }
        }
        if let Some(Value::String(store)) = cfg.get("credsStore") {
            if let Some(c) = run_helper(store, registry)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

fn decode_entry(e: &Map<String, Value>, from: &str) -> Result<Option<Credentials>, RegistryError> {
    if let Some(Value::String(auth)) = e.get("auth").filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| RegistryError::Credentials(format!("{from}: an `auth` entry is not valid base64")))?;
        let text = String::from_utf8(raw)
            .map_err(|_| RegistryError::Credentials(format!("{from}: an `auth` entry is not UTF-8")))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| RegistryError::Credentials(format!("{from}: an `auth` entry is not USER:PASSWORD")))?;
        return Ok(Some(Credentials { username: u.into(), secret: p.into(), from: from.into() }));
    }
    if let Some(Value::String(t)) = e.get("identitytoken").filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
        return Ok(Some(Credentials { username: "<token>".into(), secret: t.clone(), from: from.into() }));
    }
    Ok(None)
}

fn run_helper(name: &str, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(RegistryError::Credentials(format!("invalid credential helper name {name:?}")));
    }
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RegistryError::Credentials(format!("cannot run credential helper {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(helper_server(registry).as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| RegistryError::Credentials(format!("credential helper {program}: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        if msg.to_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(RegistryError::Credentials(format!(
            "credential helper {program} failed ({}): {}",
            out.status,
            msg.trim().chars().take(300).collect::<String>()
        )));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| RegistryError::Credentials(format!("credential helper {program} did not print JSON")))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let (username, secret) = (s("Username"), s("Secret"));
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials { username, secret, from: program }))
}

/// Stores credentials for `registry` in the login file; returns the file.
pub fn store(registry: &str, username: &str, secret: &str, auth_file: Option<&Path>) -> Result<PathBuf, RegistryError> {
    let path = login_file(auth_file).ok_or_else(|| {
        RegistryError::Credentials("nowhere to store credentials: set --authfile, REGISTRY_AUTH_FILE or HOME".into())
    })?;
    let mut cfg = read_json(&path)?.unwrap_or_default();
    let auths = cfg.entry("auths").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        return Err(RegistryError::Credentials(format!("{}: `auths` is not an object", path.display())));
    };
    let keys = keys_for(registry);
    auths.retain(|k, _| !keys.iter().any(|want| normalise_key(k) == normalise_key(want)));
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
    auths.insert(keys[0].clone(), serde_json::json!({ "auth": auth }));
    write_private(&path, &cfg)?;
    Ok(path)
}

/// Removes `registry` from the login file; `Ok(None)` when it was not there.
pub fn remove(registry: &str, auth_file: Option<&Path>) -> Result<Option<PathBuf>, RegistryError> {
    let Some(path) = login_file(auth_file) else { return Ok(None) };
    let Some(mut cfg) = read_json(&path)? else { return Ok(None) };
    let keys = keys_for(registry);
    let Some(Value::Object(auths)) = cfg.get_mut("auths") else { return Ok(None) };
    let before = auths.len();
    auths.retain(|k, _| !keys.iter().any(|want| normalise_key(k) == normalise_key(want)));
    if auths.len() == before {
        return Ok(None);
    }
    write_private(&path, &cfg)?;
    Ok(Some(path))
}

fn write_private(path: &Path, cfg: &Map<String, Value>) -> Result<(), RegistryError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: std::io::Error| RegistryError::Credentials(format!("cannot write {}: {e}", path.display()));
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::Builder::new().prefix(".imgforge-auth-").tempfile_in(dir).map_err(err)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    let mut bytes = serde_json::to_vec_pretty(cfg).expect("json");
    bytes.push(b'\n');
    tmp.write_all(&bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_entries() {
        assert_eq!(normalise_key("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(normalise_key("127.0.0.1:5000"), "127.0.0.1:5000");
        let e: Map<String, Value> = serde_json::from_str(r#"{"auth":"dXNlcjpwYTpzcw=="}"#).unwrap();
        let c = decode_entry(&e, "f").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("user", "pa:ss"));
        assert!(!format!("{c:?}").contains("pa:ss"));
    }

    #[test]
    fn store_lookup_remove() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("auth.json");
        std::fs::write(&f, r#"{"auths":{"other.example":{"auth":"YTpi"}},"keep":1}"#).unwrap();
        store("reg.example:5000", "u", "p", Some(&f)).unwrap();
        let c = lookup("reg.example:5000", Some(&f)).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("u", "p"));
        let v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(v["keep"], 1);
        assert!(v["auths"]["other.example"].is_object());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(remove("reg.example:5000", Some(&f)).unwrap().is_some());
        assert!(remove("reg.example:5000", Some(&f)).unwrap().is_none());
    }
}
