//! The command line: clap definitions and turning arguments into library calls. Nothing else.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use imgforge::image::manifest::Platform;
use imgforge::image::reference::ImageRef;
use imgforge::layers::{CompressOptions, Compression, Owner};
use imgforge::pipeline::{build, BuildOptions, BuildpackOptions};
use imgforge::sandbox::{Isolation, Network};
use imgforge::store::default_cache_dir;
use imgforge::transport::{RegistryOptions, TransportOptions};

mod escape;
mod render;

/// The source revision this binary was built from (build.rs), or `unknown`.
const REVISION: &str = env!("IMGFORGE_GIT_REVISION");
/// What this build of imgforge can do (`imgforge version`).
const FEATURES: &[&str] = &[
    "transports: oci, oci-archive, docker-archive, docker (registry, TLS by rustls)",
    "compression: gzip (zlib-rs), zstd",
    "buildpacks: heroku-classic, cnb (Buildpack API 0.7-0.12)",
    "isolation: host, userns (rootless sandbox)",
];
const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("IMGFORGE_GIT_REVISION"), ")");

#[derive(Parser)]
#[command(
    name = "imgforge",
    version,
    long_version = LONG_VERSION,
    about = "Build OCI images from source: no daemon, no root, reproducible."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print nothing but results and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Say more about each step.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Cache directory [default: $XDG_CACHE_HOME/imgforge or ~/.cache/imgforge].
    #[arg(long, global = true, env = "IMGFORGE_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Verify registries' TLS certificates (`--tls-verify=false` also allows plain http).
    #[arg(long, global = true, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    tls_verify: bool,
    /// Registry credentials file [default: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json].
    #[arg(long, global = true, value_name = "FILE")]
    authfile: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from an app directory on top of a base image.
    Build(Box<BuildArgs>),
    /// Print an image's digest, config and layers as JSON.
    Inspect {
        /// The image: docker://NAME[:TAG|@DIGEST] (or a bare name), oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME[:TAG]].
        #[arg(value_parser = parse_ref)]
        image: ImageRef,
        /// Platform to pick from a multi-platform image, e.g. linux/arm64.
        #[arg(long, value_parser = Platform::parse)]
        platform: Option<Platform>,
    },
    /// Copy an image between any two transports (registry, OCI layout, archives); prints its digest.
    ///
    /// From a multi-platform source, copy takes one platform's image (--platform, default this
    /// machine's) and writes it as a single-platform image; --all copies the whole index.
    Copy {
        /// Source image (as for inspect).
        #[arg(value_parser = parse_ref)]
        source: ImageRef,
        /// Destination: docker://NAME[:TAG], oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME[:TAG]].
        #[arg(value_parser = parse_ref)]
        destination: ImageRef,
        /// Platform to pick from a multi-platform source, e.g. linux/arm64 [default: this machine's]. Without --all only that platform's image is copied.
        #[arg(long, value_parser = Platform::parse, conflicts_with = "all")]
        platform: Option<Platform>,
        /// Copy every platform of a multi-platform source: its index (digest unchanged) and all its images. A docker-archive cannot hold an index.
        #[arg(long)]
        all: bool,
        /// Also write the manifest digest (the index digest with --all) to this file.
        #[arg(long, value_name = "FILE")]
        digest_file: Option<PathBuf>,
    },
    /// Log in to a registry: check the credentials and store them.
    Login {
        /// The registry, e.g. registry.example.com or 127.0.0.1:5000.
        registry: String,
        #[arg(short, long)]
        username: Option<String>,
        /// The password (prefer --password-stdin: arguments are visible to other users).
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a registry's stored credentials.
    Logout { registry: String },
    /// Print a shell completion script (e.g. `imgforge completions bash > ~/.local/share/bash-completion/completions/imgforge`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, as roff (e.g. `imgforge man > ~/.local/share/man/man1/imgforge.1`).
    Man,
    /// Print the version, the source revision and what this build supports.
    Version,
}

#[derive(Args)]
struct BuildArgs {
    /// The app's source directory.
    #[arg(default_value = ".")]
    app_dir: PathBuf,
    /// Base image: scratch, docker://NAME[:TAG|@DIGEST] (or a bare name), oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME[:TAG]].
    #[arg(long, value_name = "IMAGE")]
    base: String,
    /// Destination (repeatable): docker://NAME[:TAG] (or a bare name), oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME[:TAG]].
    #[arg(short = 't', long = "tag", value_name = "DEST", required = true, value_parser = parse_ref)]
    tags: Vec<ImageRef>,
    /// Where the app goes in the image, and the working directory [default: /workspace, or /app with Heroku buildpacks].
    #[arg(long, value_name = "PATH")]
    workdir: Option<String>,
    /// Owner of the app's files [default: the base image's user].
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_owner)]
    chown: Option<Owner>,
    /// Set an environment variable in the image (repeatable); `K` alone copies it from here.
    #[arg(short, long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Read K=V lines into the image environment (# comments and blank lines skipped).
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// A build-only variable for buildpacks (repeatable; `K` alone copies it from here): in
    /// ENV_DIR and CNB's platform env, never in the image, the caches or the output.
    #[arg(long = "build-env", value_name = "K=V")]
    build_env: Vec<String>,
    /// Read K=V lines into the build-only variables (as --env-file does for --env).
    #[arg(long, value_name = "FILE")]
    build_env_file: Vec<PathBuf>,
    /// The process that runs when the image runs without arguments [default: web, or the only one].
    #[arg(long, value_name = "TYPE")]
    default_process: Option<String>,
    /// Layer compression.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd", "none"])]
    compression: String,
    /// Compression level [default: gzip 4, zstd 3].
    #[arg(long, value_name = "N")]
    compression_level: Option<i32>,
    /// Compression threads: changes speed, never the bytes [default: all cores].
    #[arg(long, default_value_t = 0, hide_default_value = true, value_name = "N")]
    threads: usize,
    /// Platform to pick from a multi-platform base, e.g. linux/arm64 [default: this machine's].
    #[arg(long, value_parser = Platform::parse)]
    platform: Option<Platform>,
    /// Also write the manifest digest to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    /// Keep setuid, setgid and sticky bits of app files (dropped by default).
    #[arg(long)]
    keep_special_bits: bool,
    /// A buildpack (directory or .tgz) to run, in order (repeatable): Heroku-classic, or a Cloud Native Buildpack (with buildpack.toml).
    #[arg(short = 'b', long = "buildpack", value_name = "PATH")]
    buildpacks: Vec<PathBuf>,
    /// A directory of buildpacks: the first whose bin/detect passes runs. Cloud Native Buildpacks named in an order are also looked up here.
    #[arg(long, value_name = "DIR")]
    buildpacks_dir: Option<PathBuf>,
    /// The STACK buildpacks see [default: the base image's io.buildpacks.stack.id label, else heroku-24].
    #[arg(long, value_name = "NAME")]
    stack: Option<String>,
    /// Start the buildpacks' caches empty and run them even if nothing changed.
    #[arg(long)]
    clear_cache: bool,
    /// Where buildpacks run: host, userns (a rootless sandbox on the build image), or auto
    /// (userns when the kernel allows it and the build image has /bin/sh).
    #[arg(long, default_value = "auto", value_parser = ["host", "userns", "auto"])]
    isolation: String,
    /// The image buildpacks run on in the sandbox [default: the base image].
    #[arg(long, value_name = "IMAGE", value_parser = parse_ref)]
    build_image: Option<ImageRef>,
    /// The buildpacks' network: host, or none (only loopback; needs the sandbox).
    #[arg(long, default_value = "host", value_parser = ["none", "host"])]
    network: String,
}

/// A command-line value imgforge refuses (exit 2).
#[derive(Debug, thiserror::Error)]
enum ArgError {
    #[error("invalid registry {0:?}: expected HOST[:PORT]")]
    Registry(String),
    #[error("{0:?}: expected numeric UID[:GID]")]
    Owner(String),
    #[error("{from}: invalid variable name {name:?}")]
    EnvName { from: String, name: String },
    #[error("{flag} {}: {source}", path.display())]
    EnvFile { flag: &'static str, path: PathBuf, source: std::io::Error },
    #[error("SOURCE_DATE_EPOCH={0:?} is not a whole number of seconds since 1970")]
    SourceDateEpoch(String),
}

/// The registry part of `docker://HOST/…`, `HOST/…` or `HOST`.
fn registry_host(s: &str) -> Result<String, ArgError> {
    let s = s.strip_prefix("docker://").unwrap_or(s);
    let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    let host = s.split('/').next().unwrap_or("");
    let host = if host == "index.docker.io" || host == "registry-1.docker.io" { "docker.io" } else { host };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
        return Err(ArgError::Registry(s.to_string()));
    }
    Ok(host.to_string())
}

fn write_digest(digest: &str, digest_file: Option<&PathBuf>) -> ExitCode {
    if let Some(f) = digest_file {
        if let Err(e) = std::fs::write(f, format!("{digest}\n")) {
            return fail(&anyhow::anyhow!("Failed to write --digest-file {}: {e}", f.display()));
        }
    }
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{digest}").and_then(|_| out.flush()).is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn parse_ref(s: &str) -> Result<ImageRef, String> {
    imgforge::transport::hint::parse_cli_reference(s)
}

/// What can be known about the destinations without building anything: each is writable
/// (or, for a registry that takes no anonymous pushes, has credentials).
fn check_destinations(label: &str, tags: &[ImageRef], registry: &RegistryOptions) -> Result<(), String> {
    for d in tags {
        imgforge::transport::check_destination(d)
            .and_then(|()| imgforge::transport::check_push_credentials(d, registry))
            .map_err(|e| format!("{label} {e}"))?;
    }
    Ok(())
}

fn parse_owner(s: &str) -> Result<Owner, ArgError> {
    let num = |v: &str| v.parse::<u32>().map_err(|_| ArgError::Owner(s.to_string()));
    match s.split_once(':') {
        Some((u, g)) => Ok(Owner { uid: num(u)?, gid: num(g)? }),
        None => num(s).map(|uid| Owner { uid, gid: uid }),
    }
}

fn valid_env_name(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `K=V`, or `K` taken from this process's environment (as `docker run -e K` does).
fn parse_env_item(item: &str, from: &str) -> Result<Option<(String, String)>, ArgError> {
    let (k, v) = match item.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (item, None),
    };
    if !valid_env_name(k) {
        return Err(ArgError::EnvName { from: from.to_string(), name: k.to_string() });
    }
    Ok(match v {
        Some(v) => Some((k.to_string(), v)),
        None => std::env::var(k).ok().map(|v| (k.to_string(), v)),
    })
}

/// The variables of `files` (then `items`): `flag` names the options in messages.
fn collect_env(files: &[PathBuf], items: &[String], flag: &'static str) -> Result<Vec<(String, String)>, ArgError> {
    let mut env = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|source| ArgError::EnvFile {
            flag: if flag == "--env" { "--env-file" } else { "--build-env-file" },
            path: f.clone(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            env.extend(parse_env_item(line, &format!("{} line {}", f.display(), i + 1))?);
        }
    }
    for e in items {
        env.extend(parse_env_item(e, flag)?);
    }
    Ok(env)
}

fn source_date_epoch() -> Result<Option<u64>, ArgError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse::<u64>().map(Some).map_err(|_| ArgError::SourceDateEpoch(v.clone()))
        }
        _ => Ok(None),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\n\nFor more information, try '--help'.");
    ExitCode::from(2)
}

fn fail(err: &anyhow::Error) -> ExitCode {
    // Messages may quote what a buildpack, layer or registry said: no control sequence passes.
    eprintln!("error: {}", escape::escape_controls(&err.to_string(), false));
    let mut previous = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        // "FILE: No such file" is often followed by its own source, "No such file": say it once
        if !previous.ends_with(&format!(": {cause}")) {
            eprintln!("  caused by: {}", escape::escape_controls(&cause, false));
        }
        previous = cause;
    }
    ExitCode::from(1)
}

/// Colour in clap's help and errors: never when `NO_COLOR` is set to anything
/// (<https://no-color.org>); imgforge's own output has none.
fn color_choice() -> clap::ColorChoice {
    match std::env::var_os("NO_COLOR") {
        Some(v) if !v.is_empty() => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    }
}

/// `imgforge completions`, `man` and `version`: all about the command line itself.
fn about_the_command(command: &Command) -> Option<ExitCode> {
    use clap::CommandFactory;
    // made whole in memory first: clap_complete panics when its writer fails (a closed pipe)
    let mut text = Vec::new();
    match command {
        Command::Completions { shell } => clap_complete::generate(*shell, &mut Cli::command(), "imgforge", &mut text),
        Command::Man => clap_mangen::Man::new(Cli::command()).render(&mut text).expect("writing to memory"),
        Command::Version => {
            let features: String = FEATURES.iter().map(|f| format!("  {f}\n")).collect();
            text = format!("imgforge {}\nrevision: {REVISION}\n{features}", env!("CARGO_PKG_VERSION")).into_bytes();
        }
        _ => return None,
    }
    let mut out = std::io::stdout().lock();
    Some(if out.write_all(&text).and_then(|()| out.flush()).is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().color(color_choice()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Some(code) = about_the_command(&cli.command) {
        return code;
    }
    let cache_dir = match cli.cache_dir.clone().or_else(default_cache_dir) {
        Some(d) => d,
        None => return usage_error("no cache directory: set --cache-dir, IMGFORGE_CACHE_DIR or HOME"),
    };
    let mut registry =
        RegistryOptions { tls_verify: cli.tls_verify, auth_file: cli.authfile.clone(), ..Default::default() };
    // Tuning knob (the tests use it to exercise chunked uploads with small blobs).
    if let Some(n) = std::env::var("IMGFORGE_REGISTRY_CHUNK_SIZE").ok().and_then(|v| v.parse::<u64>().ok()) {
        registry.chunk_size = n.max(1);
    }
    match imgforge::transport::registry::Limits::with_overrides(|k| std::env::var(k).ok()) {
        Ok(l) => registry.limits = l,
        Err(e) => return usage_error(&e.to_string()),
    }
    let topts = TransportOptions { cache_dir: Some(cache_dir.clone()), registry: registry.clone() };
    match cli.command {
        Command::Copy { source, destination, platform, all, digest_file } => {
            if let Err(e) = check_destinations("destination", std::slice::from_ref(&destination), &registry) {
                return usage_error(&e);
            }
            let reporter = render::for_stderr(cli.quiet, cli.verbose, std::io::stderr().is_terminal());
            let result = imgforge::copy::copy(
                &source,
                &destination,
                &platform.unwrap_or_else(Platform::host),
                all,
                &topts,
                reporter.as_ref(),
            );
            drop(reporter);
            match result {
                Ok(d) => write_digest(&d.to_string(), digest_file.as_ref()),
                Err(e) => fail(&anyhow::Error::new(e).context(format!("Failed to copy {source} to {destination}"))),
            }
        }
        Command::Login { registry: host, username, password, password_stdin } => {
            let host = match registry_host(&host) {
                Ok(h) => h,
                Err(e) => return usage_error(&e.to_string()),
            };
            let Some(username) = username else {
                return usage_error("login needs --username (and --password-stdin or --password)");
            };
            let password = match (password, password_stdin) {
                (Some(_), true) => return usage_error("--password and --password-stdin exclude each other"),
                (Some(p), false) => {
                    // As docker does: the password is in this command line, which `ps` and
                    // /proc show to every user of the machine.
                    let reporter = render::for_stderr(cli.quiet, cli.verbose, std::io::stderr().is_terminal());
                    reporter.report(imgforge::report::Event::Warning(
                        "--password on the command line is visible to other users of this machine (ps, \
                         /proc) and may stay in your shell history; use --password-stdin instead"
                            .into(),
                    ));
                    p
                }
                (None, true) => {
                    let mut p = String::new();
                    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut p) {
                        return fail(&anyhow::anyhow!("Failed to read the password from stdin: {e}"));
                    }
                    p.trim_end_matches(['\n', '\r']).to_string()
                }
                (None, false) => return usage_error("login needs --password-stdin (or --password)"),
            };
            match imgforge::transport::registry::login(&host, &username, &password, &registry) {
                Ok(file) => {
                    if !cli.quiet {
                        eprintln!("Login succeeded: credentials for {host} stored in {}", file.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&anyhow::Error::new(e).context(format!("Failed to log in to {host}"))),
            }
        }
        Command::Logout { registry: host } => {
            let host = match registry_host(&host) {
                Ok(h) => h,
                Err(e) => return usage_error(&e.to_string()),
            };
            match imgforge::transport::registry::logout(&host, &registry) {
                Ok(Some(file)) => {
                    if !cli.quiet {
                        eprintln!("Removed the credentials for {host} from {}", file.display());
                    }
                    ExitCode::SUCCESS
                }
                Ok(None) => fail(&anyhow::anyhow!("Not logged in to {host}")),
                Err(e) => fail(&anyhow::Error::new(e).context(format!("Failed to log out of {host}"))),
            }
        }
        Command::Inspect { image, platform } => {
            match imgforge::inspect::inspect(&image, &platform.unwrap_or_else(Platform::host), &topts) {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&anyhow::Error::new(e).context(format!("Failed to inspect {image}"))),
            }
        }
        Command::Completions { .. } | Command::Man | Command::Version => unreachable!("handled above"),
        Command::Build(a) => {
            let base = match parse_ref(&a.base) {
                Ok(b) => b,
                Err(e) => return usage_error(&format!("--base: {e}")),
            };
            if !a.app_dir.is_dir() {
                return usage_error(&format!(
                    "the app directory {} does not exist or is not a directory",
                    a.app_dir.display()
                ));
            }
            if let Err(e) = check_destinations("-t", &a.tags, &registry) {
                return usage_error(&e);
            }
            let env = match collect_env(&a.env_file, &a.env, "--env") {
                Ok(e) => e,
                Err(e) => return usage_error(&e.to_string()),
            };
            let build_env = match collect_env(&a.build_env_file, &a.build_env, "--build-env") {
                Ok(e) => e,
                Err(e) => return usage_error(&e.to_string()),
            };
            let sde = match source_date_epoch() {
                Ok(s) => s,
                Err(e) => return usage_error(&e.to_string()),
            };
            let compression: Compression = a.compression.parse().expect("clap checked the value");
            let opts = BuildOptions {
                app_dir: a.app_dir.clone(),
                base,
                base_name: a.base.clone(),
                destinations: a.tags.clone(),
                workdir: a.workdir.clone(),
                chown: a.chown,
                env,
                default_process: a.default_process.clone(),
                compress: CompressOptions { compression, level: a.compression_level, threads: a.threads },
                platform: a.platform.clone(),
                cache_dir,
                source_date_epoch: sde,
                keep_special_bits: a.keep_special_bits,
                buildpacks: BuildpackOptions {
                    buildpacks: a.buildpacks.clone(),
                    buildpacks_dir: a.buildpacks_dir.clone(),
                    stack: a.stack.clone(),
                    clear_cache: a.clear_cache,
                    build_env,
                },
                registry,
                isolation: match a.isolation.as_str() {
                    "host" => Isolation::Host,
                    "userns" => Isolation::Userns,
                    _ => Isolation::Auto,
                },
                build_image: a.build_image.clone(),
                network: if a.network == "none" { Network::None } else { Network::Host },
            };
            let reporter = render::for_stderr(cli.quiet, cli.verbose, std::io::stderr().is_terminal());
            let result = build(&opts, reporter.as_ref());
            drop(reporter);
            match result {
                Ok(r) => {
                    if let Some(f) = &a.digest_file {
                        if let Err(e) = std::fs::write(f, format!("{}\n", r.manifest_digest)) {
                            return fail(&anyhow::anyhow!("Failed to write --digest-file {}: {e}", f.display()));
                        }
                    }
                    let mut out = std::io::stdout().lock();
                    if writeln!(out, "{}", r.manifest_digest).and_then(|_| out.flush()).is_err() {
                        return ExitCode::from(1);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&anyhow::Error::new(e).context(format!("Failed to build {}", a.app_dir.display()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_env() {
        assert_eq!(parse_owner("1000").unwrap(), Owner { uid: 1000, gid: 1000 });
        assert_eq!(parse_owner("1:2").unwrap(), Owner { uid: 1, gid: 2 });
        assert!(parse_owner("app").is_err());
        assert_eq!(parse_env_item("A=b=c", "t").unwrap(), Some(("A".into(), "b=c".into())));
        assert!(parse_env_item("1A=x", "t").is_err());
        assert!(parse_env_item("A-B=x", "t").is_err());
    }
}
