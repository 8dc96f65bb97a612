//! After the mode: how the image starts its processes (the launcher), then its config and
//! manifest, composed once from the base, the mode's output and the user's options.

use std::collections::BTreeMap;

use super::base::ResolvedBase;
use super::config::{self, ConfigChanges, History, LABEL_BASE_DIGEST, LABEL_BASE_NAME, LABEL_REVISION, LABEL_SOURCE};
use super::git::GitInfo;
use super::layers::LayerCtx;
use super::modes::{ModeOutput, NewLayer};
use super::{launch, procfile, BuildError, BuildOptions};
use crate::image::manifest::{media, Descriptor};
use crate::report::Event;
use crate::store::BlobStore;
use crate::transport::{ImageLayer, NewImage};

/// The default process (the user's choice, the mode's, `web`, or the only one), then how
/// processes start: with a shell in the base, the launch layer (added to `out`) as
/// entrypoint; without one, the default process's argv as `Cmd`.
pub fn add_launcher(
    out: &mut ModeOutput,
    layers: &LayerCtx<'_>,
    base: &ResolvedBase,
    wanted: Option<&str>,
) -> Result<(), BuildError> {
    let processes = &out.processes.commands;
    let default_process = choose_default_process(processes, wanted.or(out.processes.default.as_deref()))?;
    let has_shell = !processes.is_empty() && base.facts()?.has_shell;
    if !processes.is_empty() && !has_shell && !out.launch_env.is_empty() {
        return Err(BuildError::Invalid(
            "the base image has no /bin/sh: imgforge's launcher needs it to apply the Cloud Native Buildpacks' launch environment (env files, profile.d); use a base with a shell".into(),
        ));
    }
    if has_shell {
        let digests =
            layers.write("launch", None, |tar| launch::write_launch_layer(tar, processes, &out.launch_env))?;
        out.config.entrypoint = Some(vec![launch::LAUNCHER_PATH.into()]);
        out.config.cmd = default_process.map(|p| vec![p]);
        out.layers.push(NewLayer { name: "launch".into(), created_by: "imgforge build: launcher".into(), digests });
    } else if let Some(p) = &default_process {
        let argv = procfile::split_without_shell(&processes[p]).map_err(|why| {
            BuildError::Invalid(format!(
                "process {p:?} needs a shell ({why}), but the base image has no /bin/sh; write it as a plain command or use a base with a shell"
            ))
        })?;
        for other in processes.keys().filter(|k| *k != p) {
            layers.reporter.report(Event::Warning(format!(
                "process {other:?} cannot be started by name: the base image has no /bin/sh for the launcher"
            )));
        }
        out.config.entrypoint = Some(Vec::new());
        out.config.cmd = Some(argv);
    }
    Ok(())
}

fn choose_default_process(
    processes: &BTreeMap<String, String>,
    wanted: Option<&str>,
) -> Result<Option<String>, BuildError> {
    if let Some(w) = wanted {
        if !processes.contains_key(w) {
            let have: Vec<&str> = processes.keys().map(String::as_str).collect();
            return Err(BuildError::Invalid(format!(
                "--default-process {w:?} is not in the Procfile (it has: {})",
                if have.is_empty() { "no processes".into() } else { have.join(", ") }
            )));
        }
        return Ok(Some(w.to_string()));
    }
    if processes.contains_key("web") {
        return Ok(Some("web".into()));
    }
    match processes.len() {
        0 => Ok(None),
        1 => Ok(processes.keys().next().cloned()),
        _ => Err(BuildError::Invalid(format!(
            "the Procfile has several processes ({}) and none is `web`: choose the default with --default-process",
            processes.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The new image: the base's config with the mode's changes, then the user's, and a
/// manifest listing the base's layers and the new ones. Env precedence: base < the mode's
/// (buildpacks' config vars) < `--env` < defaults for what nobody set (`PORT`, the mode's).
pub fn image(
    opts: &BuildOptions,
    store: &BlobStore,
    base: &ResolvedBase,
    git: &GitInfo,
    workdir: &str,
    out: &ModeOutput,
) -> Result<NewImage, BuildError> {
    let mut changes = ConfigChanges { working_dir: Some(workdir.to_string()), ..out.config.clone() };
    changes.env.extend(opts.env.iter().cloned());
    let base_env = base.image.config.as_ref().map(|c| c.list("Env")).unwrap_or_default();
    let set_anywhere =
        |k: &str| changes.env.iter().any(|(e, _)| e == k) || base_env.iter().any(|e| e.starts_with(&format!("{k}=")));
    let defaults = std::iter::once(("PORT".to_string(), "5000".to_string())).chain(out.env_defaults.iter().cloned());
    let defaults: Vec<_> = defaults.filter(|(k, _)| !set_anywhere(k)).collect();
    changes.env.extend(defaults);
    let annotations = annotations(opts, base, git);
    changes.labels = annotations.iter().chain(&out.config.labels).map(|(k, v)| (k.clone(), v.clone())).collect();
    let epoch = opts.source_date_epoch.unwrap_or(imgforge_layers::DEFAULT_EPOCH);
    let history = History {
        created: config::rfc3339(epoch),
        new_layers: out.layers.iter().map(|l| (l.digests.diff_id, l.created_by.clone())).collect(),
    };
    let config_bytes = config::compose_config(base.image.config.as_ref(), &base.platform, &changes, &history);
    let config_digest = store.put_bytes(&config_bytes)?;
    // Base layers (media types in OCI spelling, bytes untouched) followed by the new ones.
    let mut all = base.image.oci_layers();
    all.extend(out.layers.iter().map(|l| ImageLayer {
        descriptor: Descriptor::new(l.digests.compression.media_type(), l.digests.digest, l.digests.size),
        diff_id: l.digests.diff_id,
    }));
    let descriptors: Vec<Descriptor> = all.iter().map(|l| l.descriptor.clone()).collect();
    let manifest = config::compose_manifest(&config_bytes, config_digest, &descriptors, &annotations);
    let manifest_digest = store.put_bytes(&manifest)?;
    Ok(NewImage {
        manifest,
        manifest_digest,
        manifest_media_type: media::OCI_MANIFEST.into(),
        config: config_bytes,
        config_digest,
        layers: all,
    })
}

/// Where the image comes from: its base (by name and digest) and its source revision.
fn annotations(opts: &BuildOptions, base: &ResolvedBase, git: &GitInfo) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    if let Some(d) = base.image.manifest_digest {
        annotations.insert(LABEL_BASE_NAME.to_string(), opts.base.portable_name());
        annotations.insert(LABEL_BASE_DIGEST.to_string(), d.to_string());
    }
    if let Some(s) = &git.source {
        annotations.insert(LABEL_SOURCE.to_string(), s.clone());
    }
    if let Some(r) = &git.revision {
        annotations.insert(LABEL_REVISION.to_string(), r.clone());
    }
    annotations
}
