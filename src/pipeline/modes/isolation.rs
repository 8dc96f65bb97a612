//! Where buildpacks run: the build-image sandbox, or the host. Shared by both buildpack
//! modes; decided once per build from `--isolation`, `--build-image` and `--network`.

use std::path::Path;
use std::sync::Arc;

use imgforge_layers::{Owner, Tree};

use super::BuildContext;
use crate::buildpack;
use crate::pipeline::{base_facts, BuildError, NoSandbox};
use crate::report::Event;
use crate::sandbox::{Isolation, Network};
use crate::transport::Source;

/// Owners a buildpack set inside the sandbox become the owners in the layer; what belongs
/// to root inside (the invoking user outside) gets the app owner, as on the host.
pub fn map_owners(tree: &mut Tree, runner: &crate::sandbox::Runner) {
    let Some(ids) = runner.ids() else { return };
    for e in &mut tree.entries {
        if let (Some(uid), Some(gid)) = (ids.inside_uid(e.host_uid), ids.inside_gid(e.host_gid)) {
            if (uid, gid) != (0, 0) {
                e.owner = Some(Owner { uid, gid });
            }
        }
    }
}

/// The sandbox buildpacks run in, or `None` to run them on the host (with a notice saying
/// why when `--isolation auto` fell back). `work` and `build_dir` (at the workdir) are
/// bound into it, with each buildpack of `plan` and `extra_binds`.
pub fn sandbox_for(
    cx: &BuildContext<'_>,
    plan: &buildpack::Plan,
    work: &Path,
    build_dir: &Path,
    extra_binds: Vec<crate::sandbox::Bind>,
) -> Result<Option<crate::sandbox::Sandbox>, BuildError> {
    use crate::sandbox::{rootfs, userns_available, Bind, Sandbox};
    let (opts, store, reporter, workdir) = (cx.opts, cx.store, cx.reporter, cx.workdir);
    let (base_source, base, platform) = (&cx.base.source, &cx.base.image, &cx.base.platform);
    let auto = opts.isolation == Isolation::Auto;
    let host = |why: NoSandbox| -> Result<Option<Sandbox>, BuildError> {
        if opts.network == Network::None {
            return Err(BuildError::NetworkNeedsSandbox { source: why });
        }
        if auto {
            reporter.report(Event::Warning(format!("buildpacks run on the host: {why}")));
            reporter.report(Event::CommandsRun("on the host".into()));
            Ok(None)
        } else {
            Err(BuildError::IsolationUserns { source: why })
        }
    };
    if opts.isolation == Isolation::Host {
        if opts.network == Network::None {
            return Err(BuildError::Invalid("--network none needs --isolation userns (or auto)".into()));
        }
        reporter.report(Event::CommandsRun("on the host".into()));
        return Ok(None);
    }
    if let Err(why) = userns_available() {
        return host(why.into());
    }
    let separate;
    let (source, image, name) = match &opts.build_image {
        Some(r) => {
            let err = |source| BuildError::Base { reference: r.to_string(), source };
            let s = Source::open(r, &opts.transport()).map_err(err)?;
            let img = s.resolve(platform).map_err(err)?;
            separate = (s, img);
            (&separate.0, &separate.1, r.to_string())
        }
        None => (base_source, base, opts.base_name.clone()),
    };
    if image.manifest_digest.is_none() {
        return host(NoSandbox::EmptyBuildImage(name));
    }
    let facts = base_facts::base_facts(source, image, store)
        .map_err(|e| BuildError::BaseFacts { reference: name.clone(), source: Arc::new(e) })?;
    if !facts.has_shell {
        return host(NoSandbox::NoShell(name));
    }
    let rootfs = rootfs::rootfs(source, image, store, reporter)
        .map_err(|e| BuildError::BuildImage { reference: name.clone(), source: Box::new(e) })?;
    let mut binds = vec![
        Bind { host: work.to_path_buf(), inside: "/imgforge/work".into() },
        Bind { host: build_dir.to_path_buf(), inside: workdir.to_string() },
    ];
    for (i, bp) in plan.buildpacks.iter().enumerate() {
        binds.push(Bind { host: bp.dir.clone(), inside: format!("/imgforge/buildpacks/{i}") });
    }
    binds.extend(extra_binds);
    match Sandbox::new(&rootfs.path, store.tmp_dir(), binds, opts.network) {
        Ok(sb) => {
            let net = if opts.network == Network::None { "no network" } else { "host network" };
            reporter.report(Event::CommandsRun(format!(
                "in a user namespace on {name} ({} root; {}; {net})",
                sb.root_kind(),
                sb.ids.describe()
            )));
            Ok(Some(sb))
        }
        Err(e) if auto || opts.network == Network::None => host(NoSandbox::Setup(Box::new(e))),
        Err(e) => Err(BuildError::Sandbox { source: Box::new(e) }),
    }
}
