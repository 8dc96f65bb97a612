//! Composing the new image's config and manifest. Everything is serialised from sorted
//! JSON maps, so the same inputs always give the same bytes (and digests).

use std::collections::BTreeMap;

use imgforge_layers::{DiffId, Digest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::image::manifest::{media, Descriptor, ImageConfig, Platform};

pub const LABEL_BASE_NAME: &str = "org.opencontainers.image.base.name";
pub const LABEL_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
pub const LABEL_SOURCE: &str = "org.opencontainers.image.source";
pub const LABEL_REVISION: &str = "org.opencontainers.image.revision";

/// What a build changes in the base image's config (a value, applied once by
/// [`compose_config`]). Unset fields keep the base's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChanges {
    /// Set in order; a key the base already has is replaced in place.
    pub env: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    /// Added to the base's labels (a key the base has is replaced).
    pub labels: BTreeMap<String, String>,
    /// `USER`: who processes run as.
    pub user: Option<String>,
    /// `EXPOSE`: `PORT/PROTO` entries added to the base's.
    pub exposed_ports: Vec<String>,
    /// `VOLUME`: paths added to the base's.
    pub volumes: Vec<String>,
    /// `STOPSIGNAL`.
    pub stop_signal: Option<String>,
}

/// The history a build adds: each new layer's diff_id and what made it (`created_by`),
/// all at `created` (RFC 3339).
#[derive(Debug, Default)]
pub struct History {
    pub created: String,
    pub new_layers: Vec<(DiffId, String)>,
}

/// Keys of the base config carried over; anything else (Docker's `container_config`,
/// `docker_version`, …) described how the base was built, not this image.
const KEPT: &[&str] = &["architecture", "os", "os.version", "os.features", "variant", "config", "history", "rootfs"];

pub fn compose_config(
    base: Option<&ImageConfig>,
    platform: &Platform,
    ch: &ConfigChanges,
    history: &History,
) -> Vec<u8> {
    let mut root: Map<String, Value> = base
        .map(|b| {
            b.raw.iter().filter(|(k, _)| KEPT.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
        })
        .unwrap_or_default();
    if base.is_none() {
        root.insert("architecture".into(), platform.architecture.clone().into());
        root.insert("os".into(), platform.os.clone().into());
        if let Some(v) = &platform.variant {
            root.insert("variant".into(), v.clone().into());
        }
    }
    root.insert("created".into(), history.created.clone().into());

    let mut config = match root.remove("config") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut env: Vec<String> = base.map(|b| b.list("Env")).unwrap_or_default();
    for (k, v) in &ch.env {
        let entry = format!("{k}={v}");
        match env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |p| p.0) == k) {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
    if !env.is_empty() {
        config.insert("Env".into(), env.into());
    }
    if let Some(e) = &ch.entrypoint {
        config.insert("Entrypoint".into(), e.clone().into());
    }
    if let Some(c) = &ch.cmd {
        config.insert("Cmd".into(), c.clone().into());
    }
    if let Some(w) = &ch.working_dir {
        config.insert("WorkingDir".into(), w.clone().into());
    }
    let labels = ch.labels.iter().map(|(k, v)| (k.clone(), Value::from(v.clone())));
    merge_object(&mut config, "Labels", labels);
    if let Some(u) = &ch.user {
        config.insert("User".into(), u.clone().into());
    }
    merge_object(&mut config, "ExposedPorts", ch.exposed_ports.iter().map(|p| (p.clone(), json!({}))));
    merge_object(&mut config, "Volumes", ch.volumes.iter().map(|v| (v.clone(), json!({}))));
    if let Some(s) = &ch.stop_signal {
        config.insert("StopSignal".into(), s.clone().into());
    }
    root.insert("config".into(), config.into());

    let mut diff_ids: Vec<Value> =
        base.map(|b| b.diff_ids.iter().map(|d| d.to_string().into()).collect()).unwrap_or_default();
    let mut entries: Vec<Value> = match root.remove("history") {
        Some(Value::Array(h)) => h,
        _ => Vec::new(),
    };
    for (diff_id, created_by) in &history.new_layers {
        diff_ids.push(diff_id.to_string().into());
        entries.push(json!({ "created": history.created, "created_by": created_by, "comment": "imgforge" }));
    }
    root.insert("rootfs".into(), json!({ "type": "layers", "diff_ids": diff_ids }));
    root.insert("history".into(), entries.into());
    serde_json::to_vec(&Value::Object(root)).expect("json values serialize")
}

/// Adds `entries` to the object `config[key]` (made if absent); nothing when there are none.
fn merge_object(config: &mut Map<String, Value>, key: &str, entries: impl Iterator<Item = (String, Value)>) {
    let mut entries = entries.peekable();
    if entries.peek().is_none() {
        return;
    }
    let mut object = match config.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    object.extend(entries);
    config.insert(key.into(), object.into());
}

pub fn compose_manifest(
    config: &[u8],
    config_digest: Digest,
    layers: &[Descriptor],
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": Descriptor::new(media::OCI_CONFIG, config_digest, config.len() as u64).to_json(),
        "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
    });
    if !annotations.is_empty() {
        m["annotations"] = serde_json::to_value(annotations).expect("string map");
    }
    serde_json::to_vec(&m).expect("json values serialize")
}

/// Seconds since the epoch as RFC 3339 UTC (`1980-01-01T00:00:01Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(imgforge_layers::DEFAULT_EPOCH), "1980-01-01T00:00:01Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn env_replaces_in_place_and_appends() {
        let base = crate::image::manifest::parse_config(
            br#"{"architecture":"amd64","os":"linux","container_config":{},"rootfs":{"type":"layers","diff_ids":[]},"config":{"Env":["PATH=/bin","A=1"]}}"#,
            "t",
        )
        .unwrap();
        let ch = ConfigChanges { env: vec![("A".into(), "2".into()), ("B".into(), "3".into())], ..Default::default() };
        let history = History { created: rfc3339(0), new_layers: Vec::new() };
        let out: Value =
            serde_json::from_slice(&compose_config(Some(&base), &Platform::host(), &ch, &history)).unwrap();
        assert_eq!(out["config"]["Env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert!(out.get("container_config").is_none());
        assert_eq!(out["created"], "1970-01-01T00:00:00Z");
        for key in ["User", "ExposedPorts", "Volumes", "StopSignal", "Labels"] {
            assert!(out["config"].get(key).is_none(), "{key} set though nothing asked for it");
        }
    }

    #[test]
    fn dockerfile_settings_extend_the_base() {
        let base = crate::image::manifest::parse_config(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"ExposedPorts":{"22/tcp":{}},"User":"root"}}"#,
            "t",
        )
        .unwrap();
        let ch = ConfigChanges {
            user: Some("app:app".into()),
            exposed_ports: vec!["8080/tcp".into()],
            volumes: vec!["/data".into()],
            stop_signal: Some("SIGTERM".into()),
            ..Default::default()
        };
        let out: Value =
            serde_json::from_slice(&compose_config(Some(&base), &Platform::host(), &ch, &History::default())).unwrap();
        assert_eq!(out["config"]["User"], "app:app");
        assert_eq!(out["config"]["ExposedPorts"], json!({ "22/tcp": {}, "8080/tcp": {} }));
        assert_eq!(out["config"]["Volumes"], json!({ "/data": {} }));
        assert_eq!(out["config"]["StopSignal"], "SIGTERM");
    }
}
