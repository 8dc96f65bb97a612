//! Multi-stage resolution: stages and their bases (`scratch`, an earlier stage, an image),
//! the global ARG scope (ARG before the first FROM, build-arg overrides, the predefined
//! platform args), references between stages (`COPY --from`, `RUN --mount=from=`), and the
//! stages `--target` needs, dependencies first.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{DockerfileError, ErrorKind};
use super::instruction::{ArgDecl, Instruction, Located};
use super::parse::Dockerfile;
use super::substitute::Lexer;
use crate::image::manifest::Platform;

/// What the user asked for on the command line.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `--build-arg K=V` (the CLI resolves `--build-arg K` from its environment).
    pub build_args: BTreeMap<String, String>,
    /// `--target STAGE`; the last stage when `None`.
    pub target: Option<String>,
    /// `--platform`, else the host's.
    pub target_platform: Platform,
    /// The platform imgforge runs on.
    pub build_platform: Platform,
}

impl BuildOptions {
    /// No build args, no target, the host's platform for both.
    pub fn host() -> BuildOptions {
        BuildOptions {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: Platform::host(),
            build_platform: Platform::host(),
        }
    }
}

/// Build args every build accepts without an `ARG`: they reach `RUN`'s environment but
/// never the cache key or the history (BuildKit's rule).
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Where a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    Scratch,
    /// An earlier stage, by index.
    Stage(usize),
    /// An image reference, after substitution (resolved by the pipeline, registries.conf
    /// included).
    Image(String),
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone)]
pub struct Stage {
    pub index: usize,
    pub name: Option<String>,
    /// Line of the `FROM`.
    pub line: usize,
    pub base: Base,
    /// `FROM --platform=…` after substitution, else the target platform.
    pub platform: Platform,
    pub instructions: Vec<Located>,
    /// Stages this one needs: its base, `COPY --from` and `RUN --mount=from=` sources.
    pub deps: BTreeSet<usize>,
}

/// A resolved Dockerfile: what to build and in which order.
#[derive(Debug, Clone)]
pub struct Build {
    pub file: String,
    pub escape: char,
    pub stages: Vec<Stage>,
    /// The stages to build, each after the stages it needs; the last one is the target.
    pub order: Vec<usize>,
    pub target: usize,
    /// The global scope: ARGs before the first FROM (a value, or declared without one) and
    /// the predefined platform args.
    pub global_args: Vec<(String, Option<String>)>,
    pub options: BuildOptions,
    /// `--build-arg`s no needed stage declares (BuildKit warns about them).
    pub unused_build_args: Vec<String>,
}

/// The predefined platform args, in the global scope of every Dockerfile.
pub fn platform_args(target: &Platform, build: &Platform) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        out.push((format!("{prefix}PLATFORM"), Some(p.to_string())));
        out.push((format!("{prefix}OS"), Some(p.os.clone())));
        out.push((format!("{prefix}ARCH"), Some(p.architecture.clone())));
        out.push((format!("{prefix}VARIANT"), Some(p.variant.clone().unwrap_or_default())));
    }
    out
}

/// The set values of a scope, for substitution.
pub(crate) fn values(scope: &[(String, Option<String>)]) -> Vec<(String, String)> {
    scope.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone()))).collect()
}

/// The value an `ARG` takes: the build arg, else its own default (substituted with `vars`),
/// else the global scope's value of the same name.
pub(crate) fn arg_value(
    decl: &ArgDecl,
    options: &BuildOptions,
    global: &[(String, Option<String>)],
    lexer: &Lexer,
    vars: &[(String, String)],
) -> Result<Option<String>, ErrorKind> {
    if let Some(v) = options.build_args.get(&decl.name) {
        return Ok(Some(v.clone()));
    }
    match &decl.default {
        Some(d) => Ok(Some(lexer.process_with(d, vars)?.value)),
        None => Ok(global.iter().rev().find(|(k, _)| *k == decl.name).and_then(|(_, v)| v.clone())),
    }
}

/// Turns an [`ErrorKind`] into an error at `file:line: KW`.
pub(crate) fn err_at(file: &str, line: usize, kw: &str) -> impl Fn(ErrorKind) -> DockerfileError {
    let (file, kw) = (file.to_string(), kw.to_string());
    move |k| k.at(&file, line, Some(&kw))
}

/// Resolves stages, bases and the target.
pub fn resolve(df: &Dockerfile, options: &BuildOptions) -> Result<Build, DockerfileError> {
    let lexer = Lexer::new(df.escape);
    let at = |line: usize, kw: &str| err_at(&df.file, line, kw);

    // The global scope.
    let mut global = platform_args(&options.target_platform, &options.build_platform);
    let first_from = df.instructions.iter().position(|l| matches!(l.instruction, Instruction::From(_)));
    let Some(first_from) = first_from else { return Err(ErrorKind::NoStages.at(&df.file, 0, None)) };
    let mut declared: BTreeSet<String> = BTreeSet::new();
    for l in &df.instructions[..first_from] {
        if let Instruction::Arg(decls) = &l.instruction {
            for d in decls {
                // A global ARG without default and without a build arg stays unset.
                let v = match (&d.default, options.build_args.get(&d.name)) {
                    (_, Some(v)) => Some(v.clone()),
                    (Some(def), None) => {
                        Some(lexer.process_with(def, &values(&global)).map_err(|e| at(l.line, "ARG")(e.into()))?.value)
                    }
                    (None, None) => None,
                };
                global.push((d.name.clone(), v));
                declared.insert(d.name.clone());
            }
        }
    }

    // Split into stages.
    let mut stages: Vec<Stage> = Vec::new();
    for l in &df.instructions[first_from..] {
        match &l.instruction {
            Instruction::From(f) => {
                let vars = values(&global);
                let image = lexer.process_with(&f.image, &vars).map_err(|e| at(l.line, "FROM")(e.into()))?.value;
                if image.is_empty() {
                    return Err(at(l.line, "FROM")(super::error::syntax(format!(
                        "base name ({}) should not be blank",
                        f.image
                    ))));
                }
                let platform = match &f.platform {
                    None => options.target_platform.clone(),
                    Some(p) => {
                        let v = lexer.process_with(p, &vars).map_err(|e| at(l.line, "FROM")(e.into()))?.value;
                        Platform::parse(&v).map_err(|why| {
                            at(l.line, "FROM")(ErrorKind::BadFlag {
                                flag: "platform".into(),
                                value: v,
                                why: why.to_string(),
                            })
                        })?
                    }
                };
                if let Some(name) = &f.name {
                    if let Some(first) = stages.iter().find(|s| s.name.as_ref() == Some(name)) {
                        return Err(at(l.line, "FROM")(ErrorKind::DuplicateStage {
                            name: name.clone(),
                            first_line: first.line,
                        }));
                    }
                }
                let lower = image.to_lowercase();
                let base = if lower == "scratch" {
                    Base::Scratch
                } else if let Some(s) = stages.iter().find(|s| s.name.as_deref() == Some(lower.as_str())) {
                    Base::Stage(s.index)
                } else {
                    Base::Image(image)
                };
                let mut deps = BTreeSet::new();
                if let Base::Stage(i) = base {
                    deps.insert(i);
                }
                stages.push(Stage {
                    index: stages.len(),
                    name: f.name.clone(),
                    line: l.line,
                    base,
                    platform,
                    instructions: Vec::new(),
                    deps,
                });
            }
            _ => stages.last_mut().expect("the first instruction here is FROM").instructions.push(l.clone()),
        }
    }

    // References between stages, with each stage's ARG scope.
    let names: Vec<Option<String>> = stages.iter().map(|s| s.name.clone()).collect();
    for stage in &mut stages {
        let mut scope: Vec<(String, Option<String>)> = Vec::new();
        for l in &stage.instructions {
            let kw = l.instruction.keyword();
            let mut refer =
                |raw: &str, what: &str, scope: &[(String, Option<String>)]| -> Result<(), DockerfileError> {
                    let v = lexer.process_with(raw, &values(scope)).map_err(|e| at(l.line, kw)(e.into()))?.value;
                    if let StageRef::Stage(i) =
                        stage_ref(&v, stage.index, &names).map_err(|e| at(l.line, kw)(e.kind(what)))?
                    {
                        stage.deps.insert(i);
                    }
                    Ok(())
                };
            match &l.instruction {
                Instruction::Arg(decls) => {
                    for d in decls {
                        let v = arg_value(d, options, &global, &lexer, &values(&scope)).map_err(at(l.line, kw))?;
                        scope.push((d.name.clone(), v));
                        declared.insert(d.name.clone());
                    }
                }
                Instruction::Copy(c) => {
                    if let Some(from) = &c.from {
                        refer(from, "COPY --from", &scope)?;
                    }
                }
                Instruction::Run(r) => {
                    for m in &r.mounts {
                        if let Some(from) = &m.from {
                            refer(from, "RUN --mount from", &scope)?;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    let target = match &options.target {
        None => stages.len() - 1,
        Some(t) => {
            let lower = t.to_lowercase();
            stages.iter().position(|s| s.name.as_deref() == Some(lower.as_str())).ok_or_else(|| {
                ErrorKind::TargetNotFound { name: t.clone(), available: names.iter().flatten().cloned().collect() }
                    .at(&df.file, 0, None)
            })?
        }
    };
    let order = build_order(&stages, target).map_err(|cycle| ErrorKind::Cycle(cycle).at(&df.file, 0, None))?;
    let unused_build_args = options
        .build_args
        .keys()
        .filter(|k| !declared.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
        .cloned()
        .collect();
    Ok(Build {
        file: df.file.clone(),
        escape: df.escape,
        stages,
        order,
        target,
        global_args: global,
        options: options.clone(),
        unused_build_args,
    })
}

/// What a `--from` (or mount `from=`) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageRef {
    Stage(usize),
    Image(String),
}

/// Why a `--from` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefError {
    OwnStage(String),
    NotBefore(String),
}

impl RefError {
    /// The error, for the flag named `what` (`COPY --from`, …).
    pub(crate) fn kind(self, what: &str) -> ErrorKind {
        match self {
            RefError::OwnStage(v) => ErrorKind::Cycle(format!("{what}={v} names its own stage")),
            RefError::NotBefore(v) => ErrorKind::StageNotBefore { what: what.to_string(), reference: v },
        }
    }
}

/// A stage name (any stage), a stage index (an earlier one), or else an image.
pub(crate) fn stage_ref(value: &str, current: usize, names: &[Option<String>]) -> Result<StageRef, RefError> {
    let lower = value.to_lowercase();
    if let Some(i) = names.iter().position(|n| n.as_deref() == Some(lower.as_str())) {
        return if i == current { Err(RefError::OwnStage(value.to_string())) } else { Ok(StageRef::Stage(i)) };
    }
    match value.parse::<usize>() {
        Ok(i) if i < current => Ok(StageRef::Stage(i)),
        Ok(_) => Err(RefError::NotBefore(value.to_string())),
        Err(_) => Ok(StageRef::Image(value.to_string())),
    }
}

/// Depth-first from the target, dependencies first; a cycle is reported by stage names.
/// Iterative: a long chain of stages cannot exhaust the stack.
fn build_order(stages: &[Stage], target: usize) -> Result<Vec<usize>, String> {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; stages.len()];
    let mut order = Vec::new();
    // (stage, its dependencies still to visit)
    let mut path: Vec<(usize, Vec<usize>)> = vec![(target, stages[target].deps.iter().rev().copied().collect())];
    state[target] = ON_PATH;
    while let Some((node, pending)) = path.last_mut() {
        match pending.pop() {
            Some(d) if state[d] == DONE => {}
            Some(d) if state[d] == ON_PATH => {
                let label = |j: usize| stages[j].name.clone().unwrap_or_else(|| j.to_string());
                let start = path.iter().position(|(p, _)| *p == d).unwrap_or(0);
                let names: Vec<String> = path[start..].iter().map(|(p, _)| *p).chain([d]).map(label).collect();
                return Err(names.join(" -> "));
            }
            Some(d) => {
                state[d] = ON_PATH;
                path.push((d, stages[d].deps.iter().rev().copied().collect()));
            }
            None => {
                let node = *node;
                state[node] = DONE;
                order.push(node);
                path.pop();
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn opts(args: &[(&str, &str)], target: Option<&str>) -> BuildOptions {
        BuildOptions {
            build_args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            target: target.map(str::to_string),
            target_platform: Platform::parse("linux/arm64").unwrap(),
            build_platform: Platform::parse("linux/amd64").unwrap(),
        }
    }

    fn resolve_text(text: &str, o: &BuildOptions) -> Result<Build, DockerfileError> {
        resolve(&parse(text, "Dockerfile").unwrap(), o)
    }

    #[test]
    fn bases_scratch_stages_and_images() {
        let b = resolve_text("FROM scratch AS a\nFROM a AS b\nFROM debian:12\nFROM A\n", &opts(&[], None)).unwrap();
        let bases: Vec<&Base> = b.stages.iter().map(|s| &s.base).collect();
        assert_eq!(bases, [&Base::Scratch, &Base::Stage(0), &Base::Image("debian:12".into()), &Base::Stage(0)]);
        assert_eq!((b.target, b.order.clone()), (3, vec![0, 3]));
    }

    #[test]
    fn arg_before_from_with_build_arg_overrides_and_platform_args() {
        let text = "ARG V=1\nARG REG\nFROM --platform=$BUILDPLATFORM golang:$V AS build\nFROM ${REG:-docker.io}/alpine:${V}-$TARGETARCH\n";
        let b = resolve_text(text, &opts(&[], None)).unwrap();
        assert_eq!(b.stages[0].base, Base::Image("golang:1".into()));
        assert_eq!(b.stages[0].platform.to_string(), "linux/amd64");
        assert_eq!(b.stages[1].platform.to_string(), "linux/arm64");
        assert_eq!(b.stages[1].base, Base::Image("docker.io/alpine:1-arm64".into()));
        let b = resolve_text(text, &opts(&[("V", "2"), ("REG", "r.example")], None)).unwrap();
        assert_eq!(b.stages[1].base, Base::Image("r.example/alpine:2-arm64".into()));
        assert!(b.unused_build_args.is_empty());
    }

    #[test]
    fn target_selects_only_the_stages_it_needs() {
        let text = "FROM busybox AS tools\nFROM busybox AS unused\nRUN false\nFROM scratch AS app\nCOPY --from=tools /bin/sh /sh\nFROM app AS final\n";
        let b = resolve_text(text, &opts(&[], Some("app"))).unwrap();
        assert_eq!((b.target, b.order.clone()), (2, vec![0, 2]));
        let b = resolve_text(text, &opts(&[], None)).unwrap();
        assert_eq!(b.order, [0, 2, 3]);
        let e = resolve_text(text, &opts(&[], Some("nope"))).unwrap_err();
        assert_eq!(e.to_string(), "Dockerfile: target stage \"nope\" not found (stages: tools, unused, app, final)");
    }

    #[test]
    fn copy_from_by_index_name_image_and_arg() {
        let text = "FROM busybox\nFROM busybox AS b\nARG SRC=0\nCOPY --from=$SRC /a /a\nCOPY --from=alpine:3 /b /b\nRUN --mount=type=bind,from=later,target=/x true\nFROM scratch AS later\n";
        let b = resolve_text(text, &opts(&[], Some("b"))).unwrap();
        assert_eq!(b.stages[1].deps, BTreeSet::from([0, 2]));
        assert_eq!(b.order, [0, 2, 1]);
        let e = resolve_text("FROM busybox\nCOPY --from=1 /a /a\nFROM busybox\n", &opts(&[], None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:2: COPY: COPY --from refers to stage 1, which is not defined before this stage"
        );
    }

    #[test]
    fn cycles_and_duplicates_are_errors() {
        let e = resolve_text(
            "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n",
            &opts(&[], None),
        );
        assert_eq!(e.unwrap_err().to_string(), "Dockerfile: stages depend on each other in a cycle: b -> a -> b");
        let e = resolve_text("FROM busybox AS a\nCOPY --from=a /x /x\n", &opts(&[], None));
        assert_eq!(
            e.unwrap_err().to_string(),
            "Dockerfile:2: COPY: stages depend on each other in a cycle: COPY --from=a names its own stage"
        );
        let e = resolve_text("FROM busybox AS a\nFROM busybox AS A\n", &opts(&[], None));
        assert_eq!(e.unwrap_err().to_string(), "Dockerfile:2: FROM: stage name \"a\" is used twice (first at line 1)");
    }

    #[test]
    fn a_long_chain_of_stages_is_ordered_without_recursion() {
        let mut text = String::from("FROM scratch AS s0\n");
        for i in 1..3000 {
            text.push_str(&format!("FROM s{} AS s{i}\n", i - 1));
        }
        let b = resolve_text(&text, &opts(&[], None)).unwrap();
        assert_eq!(b.order.len(), 3000);
        assert_eq!((b.order[0], b.order[2999]), (0, 2999));
    }

    #[test]
    fn unused_build_args_are_reported_but_proxies_are_not() {
        let b =
            resolve_text("FROM busybox\nARG USED\n", &opts(&[("USED", "1"), ("TYPO", "2"), ("HTTP_PROXY", "p")], None))
                .unwrap();
        assert_eq!(b.unused_build_args, ["TYPO"]);
    }

    #[test]
    fn blank_base_and_bad_platform_are_errors() {
        let e = resolve_text("ARG B\nFROM $B\n", &opts(&[], None)).unwrap_err();
        assert_eq!(e.to_string(), "Dockerfile:2: FROM: base name ($B) should not be blank");
        let e = resolve_text("FROM --platform=linux busybox\n", &opts(&[], None)).unwrap_err();
        assert!(e.to_string().starts_with("Dockerfile:1: FROM: invalid --platform=\"linux\""), "{e}");
    }
}
