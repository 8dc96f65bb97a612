//! `imgforge inspect`: an image's manifest and config, as JSON for scripts.

use serde_json::{json, Value};

use crate::image::manifest::Platform;
use crate::image::reference::ImageRef;
use crate::transport::{Source, TransportError, TransportOptions};

pub fn inspect(r: &ImageRef, platform: &Platform, opts: &TransportOptions) -> Result<Value, TransportError> {
    let source = Source::open(r, opts)?;
    // A multi-platform image: its index's digest and entries, before the one platform shown.
    let index = match &source {
        Source::Scratch | Source::DockerArchive(_) => None,
        _ => source.top().ok().and_then(|top| {
            let i = top.index()?;
            let entries: Vec<Value> = i
                .manifests
                .iter()
                .map(|d| {
                    json!({
                        "digest": d.digest.to_string(),
                        "mediaType": d.media_type,
                        "platform": d.platform.as_ref().map(ToString::to_string),
                    })
                })
                .collect();
            Some(json!({ "digest": top.digest.to_string(), "mediaType": i.media_type, "manifests": entries }))
        }),
    };
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
        "index": index,
    }))
}
