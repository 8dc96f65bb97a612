//! `imgforge inspect`: an image's manifest and config, as JSON for scripts.

use serde_json::{json, Value};

use crate::image::manifest::Platform;
use crate::image::reference::ImageRef;
use crate::transport::{Source, TransportError, TransportOptions};

pub fn inspect(r: &ImageRef, platform: &Platform, opts: &TransportOptions) -> Result<Value, TransportError> {
    let source = Source::open(r, opts)?;
    let base = source.resolve(platform)?;
    let layers: Vec<Value> = base
        .layers
        .iter()
        .map(|l| {
            let mut d = l.descriptor.to_json();
            d["diffID"] = l.diff_id.to_string().into();
            d
        })
        .collect();
    Ok(json!({
        "reference": base.reference,
        "digest": base.manifest_digest.map(|d| d.to_string()),
        "manifest": base.manifest.as_deref().and_then(|m| serde_json::from_slice::<Value>(m).ok()),
        "config": base.config.map(|c| Value::Object(c.raw)),
        "layers": layers,
    }))
}
