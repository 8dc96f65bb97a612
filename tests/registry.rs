//! The registry transport against a real registry (Debian's docker-registry, started by
//! tests/common/registry.rs): plain, TLS + htpasswd, and token auth. Interop with skopeo
//! both ways; request-log assertions for lazy, mount-first pushes; tampered storage.

mod common;

use std::fs;
use std::process::Command;

use common::registry::{Mode, Registry, PASSWORD, USER};
use common::*;
use serde_json::Value;

/// imgforge with this test's cache, credentials only from `<t>/auth.json`, and a HOME whose
/// certs.d trusts the registry's CA (TLS mode).
fn imgforge_for(t: &TestDir, reg: &Registry) -> Command {
    let mut c = t.imgforge();
    c.env("HOME", &reg.home)
        .env("REGISTRY_AUTH_FILE", t.join("auth.json"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DOCKER_CONFIG");
    c
}

/// skopeo's flags for this registry: plain http, or its CA and the test user's credentials.
fn skopeo_flags(reg: &Registry, prefix: &str) -> Vec<String> {
    match reg.mode {
        Mode::Plain => vec![format!("--{prefix}tls-verify=false")],
        Mode::TlsBasic => vec![
            format!("--{prefix}cert-dir={}", reg.ca.as_ref().unwrap().parent().unwrap().join("skopeo-certs").display()),
            format!("--{prefix}creds={USER}:{PASSWORD}"),
        ],
        Mode::Token => vec![format!("--{prefix}tls-verify=false"), format!("--{prefix}creds={USER}:{PASSWORD}")],
        Mode::SelfSigned => {
            vec![format!(
                "--{prefix}cert-dir={}",
                reg.ca.as_ref().unwrap().parent().unwrap().join("skopeo-certs").display()
            )]
        }
        Mode::MutualTls => vec![format!(
            "--{prefix}cert-dir={}",
            reg.ca.as_ref().unwrap().parent().unwrap().join("skopeo-certs").display()
        )],
    }
}

fn prepare_skopeo_certs(reg: &Registry) {
    if let Some(ca) = &reg.ca {
        let d = ca.parent().unwrap().join("skopeo-certs");
        fs::create_dir_all(&d).unwrap();
        fs::copy(ca, d.join("ca.crt")).unwrap();
        let dir = ca.parent().unwrap();
        if dir.join("client.crt").exists() {
            fs::copy(dir.join("client.crt"), d.join("client.cert")).unwrap();
            fs::copy(dir.join("client.key"), d.join("client.key")).unwrap();
        }
    }
}

fn skopeo_inspect_reg(reg: &Registry, reference: &str) -> Value {
    prepare_skopeo_certs(reg);
    let out = run_ok(Command::new("skopeo").arg("inspect").args(skopeo_flags(reg, "")).arg(reference));
    serde_json::from_slice(&out.stdout).expect("skopeo inspect JSON")
}

fn skopeo_copy(reg: &Registry, src: &str, dest: &str, extra: &[&str]) {
    prepare_skopeo_certs(reg);
    let mut c = Command::new("skopeo");
    c.args(["copy", "--quiet"]).args(extra);
    if src.starts_with("docker://") {
        c.args(skopeo_flags(reg, "src-"));
    }
    if dest.starts_with("docker://") {
        c.args(skopeo_flags(reg, "dest-"));
    }
    run_ok(c.arg(src).arg(dest));
}

fn copy_ok(cmd: &mut Command, src: &str, dest: &str) -> String {
    build_ok(cmd.args(["copy", src, dest]))
}

fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1), "expected exit 1\n{}", report(cmd, &out));
    assert!(out.stdout.is_empty(), "stdout should be empty\n{}", report(cmd, &out));
    stderr_str(&out)
}

/// An app with no Procfile: building it needs nothing from the base's filesystem.
fn plain_app(t: &TestDir) -> std::path::PathBuf {
    t.write("app/hello.txt", "hello from the registry tests\n");
    t.join("app")
}

fn layer_digests(inspect: &Value) -> Vec<String> {
    inspect["Layers"].as_array().expect("Layers").iter().map(|l| l.as_str().unwrap().to_string()).collect()
}

fn blob_gets(reqs: &[registry::Logged], digest: &str) -> usize {
    reqs.iter().filter(|r| r.method == "GET" && r.path.contains("/blobs/") && r.path.ends_with(digest)).count()
}

use common::registry;

#[test]
fn plain_registry_push_build_mount_pull_and_skopeo_interop() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Plain);
    let base = reg.reference("base:1");

    // imgforge pushes the fixture; skopeo reads it and copies it out.
    let pushed = copy_ok(&mut imgforge_for(&t, &reg), &busybox_ref(), &base);
    assert_eq!(pushed, skopeo_digest(&busybox_ref()), "copy keeps the manifest bytes");
    let inspected = skopeo_inspect_reg(&reg, &base);
    assert_eq!(inspected["Digest"], pushed);
    let base_layers = layer_digests(&inspected);
    skopeo_copy(&reg, &base, &format!("oci:{}:x", t.join("skopeo-out").display()), &[]);
    assert_eq!(skopeo_digest(&format!("oci:{}:x", t.join("skopeo-out").display())), pushed);

    // A build on that base into the same registry mounts the base layers: never a GET.
    let app = plain_app(&t);
    let mark = reg.mark();
    let mut b = imgforge_for(&t, &reg);
    b.arg("build").arg(&app).args(["--base", &base, "-t", &reg.reference("app:1"), "-t", &reg.reference("team/app:2")]);
    let digest = build_ok(&mut b);
    let reqs = reg.requests_since(mark);
    for l in &base_layers {
        assert_eq!(blob_gets(&reqs, l), 0, "base layer {l} was downloaded: {reqs:#?}");
        assert!(
            reqs.iter().any(|r| r.method == "POST"
                && r.path.contains(&format!("mount={l}"))
                && r.path.contains("from=base")
                && r.status == 201),
            "base layer {l} was not mounted: {reqs:#?}"
        );
    }
    for r in ["app:1", "team/app:2"] {
        let i = skopeo_inspect_reg(&reg, &reg.reference(r));
        assert_eq!(i["Digest"], digest, "{r}");
        let layers = layer_digests(&i);
        assert_eq!(&layers[..base_layers.len()], &base_layers[..]);
        assert_eq!(layers.len(), base_layers.len() + 1);
    }
    // The second destination took every blob from the first by mount: nothing uploaded twice.
    let uploads_to_team: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/v2/team/app/blobs/uploads/") && !r.path.contains("mount="))
        .collect();
    assert!(uploads_to_team.is_empty(), "blobs uploaded again to team/app: {uploads_to_team:#?}");

    // Pushing the unchanged image again uploads no blob.
    let mark = reg.mark();
    let mut b = imgforge_for(&t, &reg);
    b.arg("build").arg(&app).args(["--base", &base, "-t", &reg.reference("app:1")]);
    assert_eq!(build_ok(&mut b), digest);
    let reqs = reg.requests_since(mark);
    let uploads: Vec<_> = reqs.iter().filter(|r| r.path.contains("/blobs/uploads")).collect();
    assert!(uploads.is_empty(), "a push of an unchanged image uploaded: {uploads:#?}");
    assert!(reqs.iter().any(|r| r.method == "PUT" && r.path == "/v2/app/manifests/1"));

    // Pull into a layout (verified, into the store), then again: the second pull is free.
    let out = t.join("pulled");
    assert_eq!(
        copy_ok(&mut imgforge_for(&t, &reg), &reg.reference("app:1"), &format!("oci:{}:app", out.display())),
        digest
    );
    assert_eq!(skopeo_digest(&format!("oci:{}:app", out.display())), digest);
    let mark = reg.mark();
    let out2 = t.join("pulled2");
    assert_eq!(
        copy_ok(&mut imgforge_for(&t, &reg), &reg.reference("app:1"), &format!("oci:{}:app", out2.display())),
        digest
    );
    let reqs = reg.requests_since(mark);
    assert!(!reqs.iter().any(|r| r.path.contains("/blobs/")), "second pull fetched blobs: {reqs:#?}");
    // By digest, with everything in the store, it needs no registry at all.
    let mark = reg.mark();
    let by_digest = format!("{}@{digest}", reg.reference("app"));
    let out3 = format!("oci-archive:{}", t.join("pulled3.tar").display());
    assert_eq!(copy_ok(&mut imgforge_for(&t, &reg), &by_digest, &out3), digest);
    assert!(reg.requests_since(mark).is_empty(), "{:#?}", reg.requests_since(mark));

    // imgforge inspect reads the registry too.
    let mut i = imgforge_for(&t, &reg);
    let v: Value = serde_json::from_slice(&run_ok(i.args(["inspect", &reg.reference("team/app:2")])).stdout).unwrap();
    assert_eq!(v["digest"], digest);
}

#[test]
fn skopeo_pushed_images_are_bases_for_imgforge() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Plain);
    let app = plain_app(&t);
    for (name, format) in [("sk/oci:1", "oci"), ("sk/v2s2:1", "v2s2")] {
        let base = reg.reference(name);
        skopeo_copy(&reg, &busybox_ref(), &base, &["--format", format]);
        let base_layers = layer_digests(&skopeo_inspect_reg(&reg, &base));
        let layout = t.join(format!("out-{format}"));
        let dest_oci = format!("oci:{}:app", layout.display());
        let dest_reg = reg.reference(&format!("sk/{format}-app:1"));
        let mut b = imgforge_for(&t, &reg);
        b.arg("build").arg(&app).args(["--base", &base, "-t", &dest_oci, "-t", &dest_reg]);
        let digest = build_ok(&mut b);
        let local = skopeo_inspect(&dest_oci);
        assert_eq!(local["Digest"], digest);
        assert_eq!(&layer_digests(&local)[..base_layers.len()], &base_layers[..], "{format}");
        // The layout holds the base layer, pulled and verified.
        for l in &base_layers {
            read_blob(&layout, l);
        }
        let remote = skopeo_inspect_reg(&reg, &dest_reg);
        assert_eq!(remote["Digest"], digest);
        skopeo_copy(&reg, &dest_reg, &format!("oci:{}:back", t.join(format!("back-{format}")).display()), &[]);
    }
}

#[test]
fn tampered_registry_storage_is_refused_and_nothing_unverified_is_stored() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Plain);
    let base = reg.reference("base:1");
    let manifest_digest = copy_ok(&mut imgforge_for(&t, &reg), &busybox_ref(), &base);
    let layer = layer_digests(&skopeo_inspect_reg(&reg, &base))[0].clone();

    // Flip one byte in the middle of the layer's data: same size, other digest.
    let data = reg.blob_data(&layer);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let cache = t.join("fresh-cache");
    let out = t.join("out");
    let mut c = imgforge_for(&t, &reg);
    c.env("IMGFORGE_CACHE_DIR", &cache);
    let err = fails(c.args(["copy", &base, &format!("oci:{}:x", out.display())]));
    assert!(err.contains(&layer) && err.contains("does not match"), "{err}");
    let hex = &layer[7..];
    assert!(!cache.join("blobs/sha256").join(hex).exists(), "the tampered blob entered the store");
    assert!(!out.join("blobs/sha256").join(hex).exists(), "the tampered blob entered the layout");
    // A build that needs the bytes refuses too.
    let mut b = imgforge_for(&t, &reg);
    b.env("IMGFORGE_CACHE_DIR", &cache);
    let err = fails(b.arg("build").arg(plain_app(&t)).args([
        "--base",
        &base,
        "-t",
        &format!("oci:{}:y", t.join("out2").display()),
    ]));
    assert!(err.contains(&layer) && err.contains("does not match"), "{err}");
    assert!(!cache.join("blobs/sha256").join(hex).exists());

    // A manifest whose stored bytes changed: refused by tag and by digest.
    let mdata = reg.blob_data(&manifest_digest);
    let mut m = fs::read(&mdata).unwrap();
    m.push(b' ');
    fs::write(&mdata, &m).unwrap();
    let bad = sha256_digest(&m);
    let cache2 = t.join("fresh-cache2");
    for src in [base.clone(), format!("{}@{manifest_digest}", reg.reference("base"))] {
        let mut c = imgforge_for(&t, &reg);
        c.env("IMGFORGE_CACHE_DIR", &cache2);
        let err = fails(c.args(["copy", &src, &format!("oci:{}:z", t.join("out3").display())]));
        assert!(err.contains(&manifest_digest) && err.contains("refusing"), "{src}: {err}");
    }
    assert!(!cache2.join("blobs/sha256").join(&bad[7..]).exists());
    // Everything that did enter a store is what its name says.
    for c in [&cache, &cache2] {
        if let Ok(entries) = fs::read_dir(c.join("blobs/sha256")) {
            for e in entries.flatten() {
                let b = fs::read(e.path()).unwrap();
                assert_eq!(sha256_digest(&b)[7..], *e.file_name().to_string_lossy(), "{}", e.path().display());
            }
        }
    }
}

#[test]
fn tls_registry_with_basic_auth_login_logout_and_credential_helpers() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::TlsBasic);
    let dest = reg.reference("base:1");
    let src = busybox_ref();

    // Not logged in: a clear 401 that says what to do.
    let err = fails(imgforge_for(&t, &reg).args(["copy", &src, &dest]));
    assert!(err.contains("401") && err.contains(&format!("imgforge login {}", reg.host)), "{err}");

    // A wrong password is refused and not stored.
    let mut l = imgforge_for(&t, &reg);
    l.args(["login", &reg.host, "-u", USER, "-p", "wrong"]);
    let err = fails(&mut l);
    assert!(err.contains("401"), "{err}");
    assert!(!t.join("auth.json").exists());
    // -p warns, as docker does: the password is visible in `ps`.
    assert!(err.contains("warning: --password") && err.contains("--password-stdin"), "{err}");

    // login with --password-stdin stores the credentials (0600), never printing them.
    let mut l = imgforge_for(&t, &reg);
    l.args(["login", &reg.host, "-u", USER, "--password-stdin"]);
    l.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = l.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{PASSWORD}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "login: {}", stderr_str(&out));
    assert!(!stderr_str(&out).contains(PASSWORD) && !stdout_str(&out).contains(PASSWORD));
    assert!(!stderr_str(&out).contains("warning"), "{}", stderr_str(&out));
    let auth = read_json(&t.join("auth.json"));
    assert!(auth["auths"][&reg.host]["auth"].is_string(), "{auth}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(t.join("auth.json")).unwrap().permissions().mode() & 0o777, 0o600);

    // Push over TLS (the CA from certs.d), read back by skopeo.
    let mut c = imgforge_for(&t, &reg);
    let out = run(c.args(["-v", "copy", &src, &dest]));
    assert!(out.status.success(), "{}", report(&c, &out));
    let digest = parse_digest_line(&out.stdout).unwrap();
    assert!(!stderr_str(&out).contains(PASSWORD));
    assert_eq!(skopeo_inspect_reg(&reg, &dest)["Digest"], digest);
    // Pull it back through imgforge.
    let back = format!("oci:{}:x", t.join("back").display());
    assert_eq!(copy_ok(&mut imgforge_for(&t, &reg), &dest, &back), digest);

    // Without the CA: a TLS error, unless verification is turned off.
    let bare_home = t.mkdir("bare-home");
    let mut c = imgforge_for(&t, &reg);
    c.env("HOME", &bare_home).env("IMGFORGE_CACHE_DIR", t.join("c2"));
    let err = fails(c.args(["inspect", &dest]));
    assert!(err.to_lowercase().contains("certificate") || err.contains("TLS"), "{err}");
    let mut c = imgforge_for(&t, &reg);
    c.env("HOME", &bare_home).env("IMGFORGE_CACHE_DIR", t.join("c2"));
    run_ok(c.args(["--tls-verify=false", "inspect", &dest]));

    // logout removes them; the registry refuses again.
    run_ok(imgforge_for(&t, &reg).args(["logout", &reg.host]));
    assert!(read_json(&t.join("auth.json"))["auths"].get(&reg.host).is_none());
    let err = fails(imgforge_for(&t, &reg).args(["inspect", &dest]));
    assert!(err.contains("401"), "{err}");

    // A credential helper named in Docker's config.json (credHelpers).
    let bin = t.mkdir("helper-bin");
    let helper = bin.join("docker-credential-imgforgetest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'\n",
            reg.host
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    t.write("docker/config.json", format!(r#"{{"credHelpers":{{"{}":"imgforgetest"}}}}"#, reg.host));
    let mut c = imgforge_for(&t, &reg);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    c.env("DOCKER_CONFIG", t.join("docker")).env("REGISTRY_AUTH_FILE", t.join("none.json")).env("PATH", path);
    let v: Value = serde_json::from_slice(&run_ok(c.args(["inspect", &dest])).stdout).unwrap();
    assert_eq!(v["digest"], digest);
    // The same helper as the default store (credsStore).
    t.write("docker/config.json", r#"{"credsStore":"imgforgetest"}"#);
    let v: Value = serde_json::from_slice(&run_ok(c.env("IMGFORGE_CACHE_DIR", t.join("c3"))).stdout).unwrap();
    assert_eq!(v["digest"], digest);
}

#[test]
fn token_auth_registry_scoped_tokens_login_and_mount() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Token);
    let base = reg.reference("base:1");

    // Anonymous: the token server grants nothing and the registry says 401.
    let err = fails(imgforge_for(&t, &reg).args(["copy", &busybox_ref(), &base]));
    assert!(err.contains("401") && err.contains(&format!("imgforge login {}", reg.host)), "{err}");

    let mut l = imgforge_for(&t, &reg);
    run_ok(l.args(["login", &reg.host, "-u", USER, "-p", PASSWORD]));
    let digest = copy_ok(&mut imgforge_for(&t, &reg), &busybox_ref(), &base);
    assert_eq!(skopeo_inspect_reg(&reg, &base)["Digest"], digest);

    // A build pushing to another repository asks one token for push on it and pull on the
    // base's repository, and mounts the base layer.
    reg.token_requests.lock().unwrap().clear();
    let mark = reg.mark();
    let mut b = imgforge_for(&t, &reg);
    b.arg("build").arg(plain_app(&t)).args(["--base", &base, "-t", &reg.reference("app:1")]);
    let app = build_ok(&mut b);
    let tokens = reg.token_requests.lock().unwrap().clone();
    assert!(
        tokens.iter().any(|r| r.authenticated
            && r.scopes.contains(&"repository:app:pull,push".to_string())
            && r.scopes.contains(&"repository:base:pull".to_string())),
        "{tokens:#?}"
    );
    let reqs = reg.requests_since(mark);
    assert!(reqs.iter().any(|r| r.method == "POST" && r.path.contains("mount=") && r.status == 201), "{reqs:#?}");
    assert_eq!(skopeo_inspect_reg(&reg, &reg.reference("app:1"))["Digest"], app);
    let back = format!("oci:{}:x", t.join("back").display());
    assert_eq!(copy_ok(&mut imgforge_for(&t, &reg), &reg.reference("app:1"), &back), app);

    // An identity token in the auth file is exchanged as an OAuth2 refresh token (POST).
    t.write(
        "auth.json",
        format!(r#"{{"auths":{{"{}":{{"identitytoken":"{}"}}}}}}"#, reg.host, registry::REFRESH_TOKEN),
    );
    reg.token_requests.lock().unwrap().clear();
    let mut i = imgforge_for(&t, &reg);
    let v: Value = serde_json::from_slice(&run_ok(i.args(["inspect", &reg.reference("app:1")])).stdout).unwrap();
    assert_eq!(v["digest"], app);
    assert!(reg.token_requests.lock().unwrap().iter().all(|r| r.authenticated));
}

#[test]
fn large_blobs_go_up_in_chunks() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Plain);
    // 3 MiB that does not compress, in a layer stored uncompressed.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    t.write("big/data.bin", &data);
    let dest = reg.reference("big:1");
    let mark = reg.mark();
    let mut b = imgforge_for(&t, &reg);
    b.env("IMGFORGE_REGISTRY_CHUNK_SIZE", "1048576");
    b.arg("build").arg(t.join("big")).args(["--base", "scratch", "--compression", "none", "-t", &dest]);
    let digest = build_ok(&mut b);
    let patches = reg.requests_since(mark).iter().filter(|r| r.method == "PATCH").count();
    assert!(patches >= 3, "expected chunked upload, saw {patches} PATCH requests");
    assert_eq!(skopeo_inspect_reg(&reg, &dest)["Digest"], digest);
    skopeo_copy(&reg, &dest, &format!("oci:{}:x", t.join("back").display()), &[]);
}

#[test]
fn retries_after_429_and_5xx_and_resumes_dropped_downloads_with_range() {
    use common::registry::{Fault, FlakyProxy};
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Plain);
    let proxy = FlakyProxy::start(reg.port);
    let base = proxy.reference("base:1");

    // Push: a 429 with Retry-After on a HEAD, a 503 on starting an upload, a 500 on the
    // upload itself. Each is retried; the 429 waits the second it asks for.
    proxy.inject(Fault::Status { method: "HEAD", path_contains: "/blobs/", status: 429, retry_after: Some(1) });
    proxy.inject(Fault::Status { method: "POST", path_contains: "/blobs/uploads/", status: 503, retry_after: None });
    proxy.inject(Fault::Status { method: "PUT", path_contains: "/blobs/uploads/", status: 500, retry_after: None });
    let start = std::time::Instant::now();
    let digest = copy_ok(&mut imgforge_for(&t, &reg), &busybox_ref(), &base);
    assert!(start.elapsed() >= std::time::Duration::from_secs(1), "Retry-After was not honoured");
    assert!(proxy.faults.lock().unwrap().is_empty(), "not every fault was hit");
    assert_eq!(skopeo_inspect_reg(&reg, &reg.reference("base:1"))["Digest"], digest);

    // Pull: the layer download is cut off halfway; the rest comes with a Range request.
    let layer = layer_digests(&skopeo_inspect_reg(&reg, &reg.reference("base:1")))[0].clone();
    proxy.seen.lock().unwrap().clear();
    let leaked: &'static str = Box::leak(layer.clone().into_boxed_str());
    proxy.inject(Fault::Truncate { method: "GET", path_contains: leaked });
    let mut c = imgforge_for(&t, &reg);
    c.env("IMGFORGE_CACHE_DIR", t.join("pull-cache"));
    let out = t.join("out");
    assert_eq!(copy_ok(&mut c, &base, &format!("oci:{}:x", out.display())), digest);
    read_blob(&out, &layer);
    let seen = proxy.seen.lock().unwrap().clone();
    let gets: Vec<_> = seen.iter().filter(|s| s.method == "GET" && s.path.ends_with(&layer)).collect();
    assert_eq!(gets.len(), 2, "{seen:#?}");
    let range = gets[1].range.as_deref().unwrap_or_default();
    let from: u64 =
        range.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(from > 0, "the second GET should resume with Range: {seen:#?}");
}

#[test]
fn credentials_are_not_sent_where_a_redirect_leads() {
    use common::registry::{Fault, FlakyProxy};
    let t = TestDir::new();
    // The token registry needs credentials; its blob answers redirect to "blob storage" on
    // another host: a plain registry holding the same image, behind a recording proxy.
    let reg = Registry::start(&t, Mode::Token);
    let storage = Registry::start(&t, Mode::Plain);
    let front = FlakyProxy::start(reg.port);
    let elsewhere = FlakyProxy::start(storage.port);
    run_ok(imgforge_for(&t, &reg).args(["login", &front.host, "-u", USER, "-p", PASSWORD]));
    let digest = copy_ok(&mut imgforge_for(&t, &reg), &busybox_ref(), &front.reference("base:1"));
    copy_ok(&mut imgforge_for(&t, &storage), &busybox_ref(), &storage.reference("base:1"));
    let layer = layer_digests(&skopeo_inspect(&busybox_ref()))[0].clone();
    let leaked: &'static str = Box::leak(layer.clone().into_boxed_str());
    front.inject(Fault::Redirect { method: "GET", path_contains: leaked, to: format!("http://{}", elsewhere.host) });
    let mut c = imgforge_for(&t, &reg);
    c.env("IMGFORGE_CACHE_DIR", t.join("pull-cache"));
    let out = t.join("out");
    assert_eq!(copy_ok(&mut c, &front.reference("base:1"), &format!("oci:{}:x", out.display())), digest);
    read_blob(&out, &layer);
    let front_seen = front.seen.lock().unwrap().clone();
    assert!(front_seen.iter().any(|s| s.path.ends_with(&layer) && s.authorization), "{front_seen:#?}");
    let seen = elsewhere.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|s| s.path.ends_with(&layer)), "the redirect was not followed: {seen:#?}");
    assert!(seen.iter().all(|s| !s.authorization), "credentials went to another host: {seen:#?}");
}

#[test]
fn a_redirect_targets_challenge_is_never_answered_with_the_registrys_credentials() {
    use common::registry::{respond, FakeServer, Fault, FlakyProxy};
    let t = TestDir::new();
    // Registry A needs credentials (token auth, the user logged in). Its blob GET redirects
    // to host B, which asks for a token from a realm of its own and records what it gets.
    let reg = Registry::start(&t, Mode::Token);
    let front = FlakyProxy::start(reg.port);
    let evil = FakeServer::start(|req, out| {
        if req.path.starts_with("/token") {
            return respond(out, "200 OK", &[("Content-Type", "application/json")], br#"{"token":"token-from-b"}"#);
        }
        let host = out.local_addr()?.to_string();
        let challenge = format!(r#"Bearer realm="http://{host}/token",service="b""#);
        respond(out, "401 Unauthorized", &[("WWW-Authenticate", &challenge)], b"")
    });
    run_ok(imgforge_for(&t, &reg).args(["login", &front.host, "-u", USER, "-p", PASSWORD]));
    copy_ok(&mut imgforge_for(&t, &reg), &busybox_ref(), &front.reference("base:1"));
    let layer = layer_digests(&skopeo_inspect(&busybox_ref()))[0].clone();
    let leaked: &'static str = Box::leak(layer.clone().into_boxed_str());
    front.inject(Fault::Redirect { method: "GET", path_contains: leaked, to: format!("http://{}", evil.host) });
    front.seen.lock().unwrap().clear();
    let mut c = imgforge_for(&t, &reg);
    c.env("IMGFORGE_CACHE_DIR", t.join("pull-cache"));
    let err = fails(c.args(["copy", &front.reference("base:1"), &format!("oci:{}:x", t.join("out").display())]));
    // B got the redirected GET, without credentials, and no token request at all: neither
    // A's Basic credentials nor anything bought with them reached it.
    let seen = evil.requests();
    assert!(seen.iter().any(|r| r.path.ends_with(&layer)), "the redirect was not followed: {seen:#?}");
    assert!(seen.iter().all(|r| r.authorization.is_none()), "credentials went to B: {seen:#?}");
    assert!(seen.iter().all(|r| !r.path.starts_with("/token")), "B's token realm was asked: {seen:#?}");
    // A saw its own requests only with its own credentials, and nothing after B's challenge.
    let front_seen = front.seen.lock().unwrap().clone();
    let redirected = front_seen.iter().position(|s| s.fault.is_some()).expect("the redirect fault was hit");
    assert_eq!(front_seen.len(), redirected + 1, "A was asked again after B's challenge: {front_seen:#?}");
    // The error names both hosts and says why.
    assert!(err.contains(&front.host) && err.contains(&evil.host), "{err}");
    assert!(err.contains("redirected"), "{err}");
}

/// Small limits so that a slow registry fails in seconds: 1 s to connect, 2 s for an answer,
/// at least 1 KiB/s over 2 s, 2 tries.
fn impatient(c: &mut Command) -> &mut Command {
    c.env("IMGFORGE_REGISTRY_CONNECT_TIMEOUT", "1")
        .env("IMGFORGE_REGISTRY_RESPONSE_TIMEOUT", "2")
        .env("IMGFORGE_REGISTRY_MIN_RATE", "1024")
        .env("IMGFORGE_REGISTRY_SLOW_TIME", "2")
        .env("IMGFORGE_REGISTRY_ATTEMPTS", "2")
}

/// Copies `HOST/app:1` with [`impatient`] limits: it must fail within 30 s; gives stderr.
fn copy_from_fails_soon(t: &TestDir, host: &str) -> String {
    let start = std::time::Instant::now();
    let mut c = t.imgforge();
    let err = fails(impatient(&mut c).args([
        "copy",
        &format!("docker://{host}/app:1"),
        &format!("oci:{}:x", t.join("out").display()),
    ]));
    let took = start.elapsed();
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}: {err}");
    err
}

#[test]
fn a_registry_that_never_answers_fails_the_copy_in_bounded_time() {
    use common::registry::FakeServer;
    let t = TestDir::new();
    // Takes the connection, reads the request, never says a word.
    let silent = FakeServer::start(|_, _| {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        Ok(())
    });
    let err = copy_from_fails_soon(&t, &silent.host);
    assert!(err.contains(&silent.host), "{err}");
    assert!(err.contains("did not answer within 2 s"), "{err}");
    assert!(!silent.requests().is_empty(), "the request never reached the server");
}

#[test]
fn a_registry_that_dribbles_a_manifest_fails_the_copy_in_bounded_time() {
    use common::registry::{respond, FakeServer};
    use std::io::Write;
    let t = TestDir::new();
    // Answers /v2/ at once, then sends a manifest one byte a second.
    let dribbler = FakeServer::start(|req, out| {
        if req.path == "/v2/" {
            return respond(out, "200 OK", &[], b"");
        }
        let body = vec![b' '; 2000];
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        for b in body {
            out.write_all(&[b])?;
            out.flush()?;
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        Ok(())
    });
    let err = copy_from_fails_soon(&t, &dribbler.host);
    assert!(err.contains(&dribbler.host), "{err}");
    assert!(err.contains("GET manifest app:1"), "{err}");
    assert!(err.contains("under the minimum of 1024 bytes/s"), "{err}");
}

#[test]
fn a_registry_that_dribbles_a_layer_fails_the_pull_in_bounded_time() {
    use common::registry::{respond, FakeServer};
    use std::io::Write;
    let t = TestDir::new();
    // Serves busybox's manifest and config at once, then its layer one byte a second.
    let layout = busybox_layout();
    let index = read_json(&layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let manifest = read_blob(&layout, &manifest_digest);
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let media_type = m["mediaType"].as_str().unwrap().to_string();
    let layer_bytes = read_blob(&layout, &layer);
    let config_bytes = read_blob(&layout, &config);
    let (l2, md2) = (layer.clone(), manifest_digest.clone());
    let server = FakeServer::start(move |req, out| {
        if req.path == "/v2/" {
            respond(out, "200 OK", &[], b"")
        } else if req.path.contains("/manifests/") {
            respond(out, "200 OK", &[("Content-Type", &media_type), ("Docker-Content-Digest", &md2)], &manifest)
        } else if req.path.ends_with(&config) {
            respond(out, "200 OK", &[], &config_bytes)
        } else if req.path.ends_with(&l2) {
            write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", layer_bytes.len())?;
            for b in &layer_bytes {
                out.write_all(&[*b])?;
                out.flush()?;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Ok(())
        } else {
            respond(out, "404 Not Found", &[], b"")
        }
    });
    let err = copy_from_fails_soon(&t, &server.host);
    assert!(err.contains(&server.host) && err.contains(&layer), "{err}");
    assert!(err.contains("under the minimum of 1024 bytes/s"), "{err}");
    // Nothing unverified was kept: no layer in the store, no index written.
    assert!(!t.join("out/index.json").exists());
    let store_blob = t.cache_dir().join("blobs/sha256").join(&layer[7..]);
    assert!(!store_blob.exists(), "a partial layer is in the store");
}

/// Writes a blob into an OCI layout; returns its descriptor JSON.
fn put_blob(layout: &std::path::Path, media_type: &str, bytes: &[u8]) -> Value {
    let d = sha256_digest(bytes);
    fs::write(layout.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
    serde_json::json!({"mediaType": media_type, "digest": d, "size": bytes.len()})
}

#[test]
fn multi_platform_index_resolves_to_the_requested_platform() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Plain);
    // A two-platform index: busybox as linux/amd64, and the same layer with an arm64 config.
    let layout = t.join("multi");
    copy_tree(&busybox_layout(), &layout);
    let amd = layout_manifest(&layout, "latest");
    let amd_digest = index_tags(&layout)[0].1.clone();
    let mut config: Value =
        serde_json::from_slice(&read_blob(&layout, amd["config"]["digest"].as_str().unwrap())).unwrap();
    config["architecture"] = "arm64".into();
    let config_desc =
        put_blob(&layout, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).unwrap());
    let mut arm = amd.clone();
    arm["config"] = config_desc;
    let arm_desc = put_blob(&layout, "application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&arm).unwrap());
    let arm_digest = arm_desc["digest"].as_str().unwrap().to_string();
    let mut amd_desc = read_index(&layout)["manifests"][0].clone();
    amd_desc.as_object_mut().unwrap().remove("annotations");
    let mut arm_desc = arm_desc;
    arm_desc["platform"] = serde_json::json!({"architecture": "arm64", "os": "linux"});
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [amd_desc, arm_desc],
    });
    let mut index_desc =
        put_blob(&layout, "application/vnd.oci.image.index.v1+json", &serde_json::to_vec(&index).unwrap());
    index_desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "multi"});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [index_desc]})).unwrap(),
    )
    .unwrap();
    let multi = reg.reference("multi:1");
    skopeo_copy(&reg, &format!("oci:{}:multi", layout.display()), &multi, &["--all"]);

    let inspect = |platform: Option<&str>| -> Value {
        let mut c = imgforge_for(&t, &reg);
        c.arg("inspect").arg(&multi);
        if let Some(p) = platform {
            c.args(["--platform", p]);
        }
        serde_json::from_slice(&run_ok(&mut c).stdout).unwrap()
    };
    assert_eq!(inspect(Some("linux/amd64"))["digest"], amd_digest);
    let v = inspect(Some("linux/arm64"));
    assert_eq!(v["digest"], arm_digest);
    assert_eq!(v["config"]["architecture"], "arm64");
    let err = fails(imgforge_for(&t, &reg).args(["inspect", &multi, "--platform", "linux/s390x"]));
    assert!(err.contains("linux/arm64") && err.contains("--platform"), "{err}");
    // copy takes the one platform's image, bytes unchanged.
    let out = format!("oci:{}:arm", t.join("arm").display());
    let mut c = imgforge_for(&t, &reg);
    assert_eq!(build_ok(c.args(["copy", "--platform", "linux/arm64", &multi, &out])), arm_digest);
}

#[test]
fn copy_relocates_an_image_between_registries_fetching_only_what_is_missing() {
    let t = TestDir::new();
    let upstream = Registry::start(&t, Mode::Plain);
    let airgap = Registry::start(&t, Mode::Plain);
    let digest = copy_ok(&mut imgforge_for(&t, &upstream), &busybox_ref(), &upstream.reference("library/base:1"));
    let layers = layer_digests(&skopeo_inspect_reg(&upstream, &upstream.reference("library/base:1")));

    let (m_up, m_air) = (upstream.mark(), airgap.mark());
    let mut c = imgforge_for(&t, &upstream);
    c.env("IMGFORGE_CACHE_DIR", t.join("relocate-cache"));
    assert_eq!(
        copy_ok(&mut c, &upstream.reference("library/base:1"), &airgap.reference("mirror/base:1")),
        digest,
        "the manifest bytes, and so the digest, are kept"
    );
    assert_eq!(skopeo_inspect_reg(&airgap, &airgap.reference("mirror/base:1"))["Digest"], digest);
    for l in &layers {
        assert_eq!(blob_gets(&upstream.requests_since(m_up), l), 1, "layer {l} fetched once");
        let air = airgap.requests_since(m_air);
        assert!(air.iter().any(|r| r.method == "PUT" && r.path.contains(&format!("digest={l}"))), "{air:#?}");
    }
    // Again: the destination has everything, so nothing is fetched and nothing uploaded.
    let (m_up, m_air) = (upstream.mark(), airgap.mark());
    let mut c = imgforge_for(&t, &upstream);
    c.env("IMGFORGE_CACHE_DIR", t.join("relocate-cache-2"));
    copy_ok(&mut c, &upstream.reference("library/base:1"), &airgap.reference("mirror/base:1"));
    assert!(!upstream
        .requests_since(m_up)
        .iter()
        .any(|r| r.path.contains("/blobs/") && r.method == "GET" && layers.iter().any(|l| r.path.ends_with(l))));
    assert!(!airgap.requests_since(m_air).iter().any(|r| r.path.contains("/blobs/uploads")));
}

#[test]
fn client_certificates_from_certs_d() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::MutualTls);
    let dest = reg.reference("base:1");
    // certs.d has the CA but no client certificate: the registry refuses the handshake.
    let err = fails(imgforge_for(&t, &reg).args(["copy", &busybox_ref(), &dest]));
    assert!(err.contains(&reg.host), "{err}");
    // With client.cert + client.key beside it (the containers convention), it works.
    let certs_d = reg.home.join(".config/containers/certs.d").join(&reg.host);
    let dir = reg.ca.as_ref().unwrap().parent().unwrap();
    fs::copy(dir.join("client.crt"), certs_d.join("client.cert")).unwrap();
    fs::copy(dir.join("client.key"), certs_d.join("client.key")).unwrap();
    let digest = copy_ok(&mut imgforge_for(&t, &reg), &busybox_ref(), &dest);
    assert_eq!(skopeo_inspect_reg(&reg, &dest)["Digest"], digest);
}

#[test]
fn a_self_signed_certificate_in_certs_d_is_trusted_as_itself_and_no_other() {
    let t = TestDir::new();
    // The registry serves `openssl req -x509 -newkey rsa:2048 -nodes ...` (CN and SAN
    // localhost/127.0.0.1); its HOME's certs.d/127.0.0.1:PORT/ca.crt is that certificate.
    let reg = Registry::start(&t, Mode::SelfSigned);
    let dest = reg.reference("selfsigned:1");
    let digest = copy_ok(&mut imgforge_for(&t, &reg), &busybox_ref(), &dest);
    assert_eq!(skopeo_inspect_reg(&reg, &dest)["Digest"], digest);
    let mut pull = imgforge_for(&t, &reg);
    pull.env("IMGFORGE_CACHE_DIR", t.join("pull-cache"));
    let out = t.join("out");
    assert_eq!(copy_ok(&mut pull, &dest, &format!("oci:{}:x", out.display())), digest);

    // Another certificate made the same way (same names, another key) is still refused.
    let other = t.mkdir("other");
    registry::self_signed(&other, "domain");
    let home = t.mkdir("other-home");
    let certs_d = home.join(".config/containers/certs.d").join(&reg.host);
    fs::create_dir_all(&certs_d).unwrap();
    fs::copy(other.join("domain.crt"), certs_d.join("ca.crt")).unwrap();
    let mut c = imgforge_for(&t, &reg);
    c.env("HOME", &home).env("IMGFORGE_CACHE_DIR", t.join("other-cache"));
    let err = fails(c.args(["copy", &dest, &format!("oci:{}:y", t.join("out2").display())]));
    assert!(err.contains(&reg.host) && err.to_lowercase().contains("certificate"), "{err}");
    assert!(!t.join("out2/index.json").exists());
}

#[test]
fn a_later_push_to_another_repository_mounts_from_where_the_cache_saw_the_blobs() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Plain);
    let src = busybox_ref();
    let cache = t.join("push-cache");
    let push = |dest: &str, cache: &std::path::Path| {
        let mut c = imgforge_for(&t, &reg);
        c.env("IMGFORGE_CACHE_DIR", cache);
        copy_ok(&mut c, &src, &reg.reference(dest))
    };
    let digest = push("a:1", &cache);
    let blobs = layer_digests(&skopeo_inspect(&src)).len() + 1; // and the config
    let uploads = |reqs: &[registry::Logged]| {
        reqs.iter().filter(|r| matches!(r.method.as_str(), "PUT" | "PATCH") && r.path.contains("/blobs/")).count()
    };

    // Another process, the same cache: every blob is mounted from a, nothing goes up.
    let mark = reg.mark();
    assert_eq!(push("b:1", &cache), digest);
    let reqs = reg.requests_since(mark);
    let mounts: Vec<_> = reqs.iter().filter(|r| r.method == "POST" && r.path.contains("mount=")).collect();
    assert_eq!(mounts.len(), blobs, "{reqs:#?}");
    assert!(mounts.iter().all(|r| r.status == 201 && r.path.contains("from=a")), "{reqs:#?}");
    assert_eq!(uploads(&reqs), 0, "{reqs:#?}");
    assert_eq!(skopeo_inspect_reg(&reg, &reg.reference("b:1"))["Digest"], digest);

    // A cache that names a repository without the blobs: the mount is refused (202, not
    // 201) and the blob is uploaded instead.
    let stale = t.join("stale-cache");
    for d in layer_digests(&skopeo_inspect(&src)) {
        let f = stale.join("blob-locations-v1").join(reg.host.replace(':', "+")).join(&d[7..]);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, "ghost/repo\n").unwrap();
    }
    let mark = reg.mark();
    assert_eq!(push("c:1", &stale), digest);
    let reqs = reg.requests_since(mark);
    assert!(reqs.iter().any(|r| r.path.contains("from=ghost") && r.status == 202), "{reqs:#?}");
    assert_eq!(uploads(&reqs), blobs, "{reqs:#?}");
    assert_eq!(skopeo_inspect_reg(&reg, &reg.reference("c:1"))["Digest"], digest);
}
