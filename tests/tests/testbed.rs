//! Self-test of the test bed kit against the real components: registries (anonymous, Basic,
//! Bearer with the kit's token server), image building and pushing with skopeo, multi-platform
//! indexes, containerd + ctr-remote eStargz conversion, and the fault proxy. Each test also
//! checks that nothing it started outlives it (processes, mounts, directories).

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use skiff_tests::{
    convert_estargz, every_entry_type_layers, inspect, inspect_raw, mounts_under,
    processes_mentioning, push_layout, require, Containerd, Fault, FaultProxy, ImageSpec,
    LayerSpec, MultiPlatformSpec, Platform, Registry, RegistryAuth,
};

/// Asserts that nothing of a component whose work dir was `dir` is left.
fn assert_no_leaks(dir: &Path) {
    let needle = dir.display().to_string();
    let processes = processes_mentioning(&needle);
    assert!(processes.is_empty(), "processes left: {processes:?}");
    assert!(mounts_under(dir).is_empty(), "mounts left under {needle}");
    assert!(!dir.exists(), "{needle} not removed");
}

fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let result = f();
    eprintln!("[timing] {what}: {:.2?}", start.elapsed());
    result
}

/// An image with every entry type the kit can write, on top of busybox.
fn every_file_type_image() -> ImageSpec {
    let (lower, upper) = every_entry_type_layers(3 * 1024 * 1024 + 17);
    ImageSpec::new()
        .busybox()
        .layer(lower)
        .layer(upper.uncompressed())
        .cmd(&["/bin/cat", "/data/hello.txt"])
        .env("SKIFF_TEST=1")
}

#[test]
fn anonymous_registry_answers_v2() -> Result<()> {
    require(&["docker-registry"])?;
    let registry = timed("start anonymous registry", || {
        Registry::start(RegistryAuth::Anonymous)
    })?;
    let response = registry.get("/v2/", &[])?;
    ensure!(response.status == 200, "GET /v2/ → {}", response.status);
    ensure!(registry.storage_dir().is_dir());
    ensure!(registry.host().starts_with("127.0.0.1:"));
    let dir = registry.work_dir().to_path_buf();
    drop(registry);
    assert_no_leaks(&dir);
    Ok(())
}

#[test]
fn basic_registry_challenges_and_accepts_credentials() -> Result<()> {
    require(&["docker-registry", "htpasswd"])?;
    let registry = Registry::start(RegistryAuth::basic("alice", "s3cret"))?;
    let response = registry.get("/v2/", &[])?;
    ensure!(response.status == 401, "GET /v2/ → {}", response.status);
    let challenge = response.header("WWW-Authenticate").unwrap_or_default();
    ensure!(
        challenge.starts_with("Basic realm="),
        "challenge {challenge:?}"
    );
    // alice:s3cret
    let ok = registry.get("/v2/", &[("Authorization", "Basic YWxpY2U6czNjcmV0")])?;
    ensure!(ok.status == 200, "with credentials → {}", ok.status);
    // alice:wrong
    let bad = registry.get("/v2/", &[("Authorization", "Basic YWxpY2U6d3Jvbmc=")])?;
    ensure!(bad.status == 401, "with wrong password → {}", bad.status);
    let dir = registry.work_dir().to_path_buf();
    drop(registry);
    assert_no_leaks(&dir);
    Ok(())
}

#[test]
fn bearer_registry_accepts_tokens_from_kit_token_server() -> Result<()> {
    require(&["docker-registry"])?;
    let registry = timed("start bearer registry + token server", || {
        Registry::start(RegistryAuth::bearer("bob", "hunter2"))
    })?;
    let token_server = registry
        .token_server()
        .context("bearer registry has a token server")?;
    let response = registry.get("/v2/", &[])?;
    ensure!(response.status == 401, "GET /v2/ → {}", response.status);
    let challenge = response.header("WWW-Authenticate").unwrap_or_default();
    ensure!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!("realm=\"{}\"", token_server.realm()))
            && challenge.contains("service=\"skiff-test-registry\""),
        "challenge {challenge:?}"
    );

    let token = token_server.fetch_token(&[], Some(("bob", "hunter2")))?;
    let bearer = format!("Bearer {token}");
    let ok = registry.get("/v2/", &[("Authorization", &bearer)])?;
    ensure!(
        ok.status == 200,
        "/v2/ with token → {} {}",
        ok.status,
        ok.body_text()
    );

    // Wrong credentials are refused by the token server itself.
    ensure!(token_server
        .fetch_token(&[], Some(("bob", "nope")))
        .is_err());
    // Anonymous tokens carry no access: the registry refuses them for a repository.
    let anonymous = token_server.fetch_token(&["repository:app:pull"], None)?;
    let denied = registry.get(
        "/v2/app/tags/list",
        &[("Authorization", &format!("Bearer {anonymous}"))],
    )?;
    ensure!(
        denied.status == 401,
        "anonymous token on a repo → {}",
        denied.status
    );
    ensure!(
        registry.token_requests() == 3,
        "requests {}",
        registry.token_requests()
    );
    let log = token_server.request_log();
    ensure!(log[1].status == 401 && log[2].user.is_none(), "{log:?}");

    let dir = registry.work_dir().to_path_buf();
    let realm_port = token_server.addr().port();
    drop(registry);
    assert_no_leaks(&dir);
    ensure!(
        std::net::TcpStream::connect(("127.0.0.1", realm_port)).is_err(),
        "token server still listening"
    );
    Ok(())
}

#[test]
fn images_with_every_file_type_push_to_anonymous_and_bearer_registries() -> Result<()> {
    require(&["docker-registry", "skopeo", "busybox"])?;
    let layout = timed("build every-file-type image layout", || {
        every_file_type_image().build_layout()
    })?;
    let image = &layout.images()[0];
    ensure!(image.layers.len() == 3);

    let anonymous = Registry::start(RegistryAuth::Anonymous)?;
    let digest = timed("skopeo push (anonymous)", || {
        push_layout(&layout, &anonymous.host(), "every/type:v1", None)
    })?;
    ensure!(digest == layout.digest());
    let raw: Value = serde_json::from_slice(&anonymous.raw_manifest("every/type:v1")?)?;
    let pushed_layers: Vec<&str> = raw["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str())
        .collect();
    let built_layers: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    ensure!(
        pushed_layers == built_layers,
        "{pushed_layers:?} != {built_layers:?}"
    );
    // The uncompressed layer stays uncompressed.
    ensure!(raw["layers"][2]["mediaType"] == "application/vnd.oci.image.layer.v1.tar");
    let summary = inspect(&anonymous.reference("every/type:v1"), None)?;
    ensure!(
        summary["Layers"].as_array().map(Vec::len) == Some(3),
        "{summary}"
    );
    ensure!(summary["Architecture"] == Platform::host().architecture.as_str());

    let bearer = Registry::start(RegistryAuth::bearer("bob", "hunter2"))?;
    let digest = timed("skopeo push (bearer)", || {
        bearer.push(&layout, "every/type:v1")
    })?;
    ensure!(digest == layout.digest());
    ensure!(
        bearer.token_requests() > 0,
        "skopeo never asked for a token"
    );
    let raw = inspect_raw(&bearer.reference("every/type:v1"), bearer.credentials())?;
    ensure!(skiff_tests::sha256_digest(&raw) == digest);
    ensure!(
        inspect_raw(&bearer.reference("every/type:v1"), None).is_err(),
        "anonymous read of a bearer registry succeeded"
    );

    let dirs = [
        anonymous.work_dir().to_path_buf(),
        bearer.work_dir().to_path_buf(),
        layout.path().to_path_buf(),
    ];
    drop((anonymous, bearer, layout));
    for dir in &dirs {
        assert_no_leaks(dir);
    }
    Ok(())
}

#[test]
fn multi_platform_index_pushes_all_platforms() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let layout = MultiPlatformSpec::host_and_foreign().build_layout()?;
    ensure!(layout.is_index());
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let digest = timed("skopeo push multi-platform index", || {
        registry.push(&layout, "multi:v1")
    })?;
    ensure!(digest == layout.digest());
    let index: Value = serde_json::from_slice(&registry.raw_manifest("multi:v1")?)?;
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .map(|m| {
            m["platform"]["architecture"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    ensure!(
        platforms
            == [
                Platform::host().architecture,
                Platform::foreign().architecture
            ],
        "{platforms:?}"
    );
    // Every platform's manifest and layer arrived, not only the host's.
    for image in layout.images() {
        let manifest = registry.raw_manifest(&format!("multi@{}", image.manifest_digest))?;
        ensure!(manifest == image.manifest);
        let blob = registry.get(&format!("/v2/multi/blobs/{}", image.layers[0].digest), &[])?;
        ensure!(
            blob.status == 200,
            "layer of {:?} → {}",
            image.platform,
            blob.status
        );
    }
    Ok(())
}

#[test]
fn containerd_converts_to_estargz_with_toc_annotations() -> Result<()> {
    require(&[
        "root",
        "docker-registry",
        "skopeo",
        "containerd",
        "ctr",
        "ctr-remote",
        "busybox",
        "overlayfs",
    ])?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    // Every entry type: containerd unpacks it (whiteouts, devices, xattrs) and ctr-remote
    // rewrites it, so both Go tar readers accept what the kit writes.
    let layout = every_file_type_image().build_layout()?;
    registry.push(&layout, "app:plain")?;
    let containerd = timed("start containerd", Containerd::start)?;
    let version = containerd.ctr_ok(&["version"])?;
    ensure!(version.contains("Server:"), "{version}");
    let digest = timed("ctr-remote pull + convert --estargz + push", || {
        convert_estargz(&containerd, &registry.host(), "app:plain", "app:esgz", None)
    })?;
    let raw = registry.raw_manifest("app:esgz")?;
    ensure!(skiff_tests::sha256_digest(&raw) == digest);
    let manifest: Value = serde_json::from_slice(&raw)?;
    let layers = manifest["layers"].as_array().context("layers")?;
    ensure!(layers.len() == 3);
    for layer in layers {
        ensure!(
            layer["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string(),
            "{layer}"
        );
    }

    // The same through a Bearer registry: containerd's OAuth POST to the kit's token server.
    let bearer = Registry::start(RegistryAuth::bearer("bob", "hunter2"))?;
    bearer.push(&layout, "app:plain")?;
    timed("convert on the bearer registry", || {
        convert_estargz(
            &containerd,
            &bearer.host(),
            "app:plain",
            "app:esgz",
            bearer.credentials(),
        )
    })?;
    let token_log = bearer.token_server().context("token server")?.request_log();
    ensure!(
        token_log
            .iter()
            .any(|r| r.method == "POST" && r.status == 200),
        "containerd never used the OAuth POST: {token_log:?}"
    );
    let bearer_dir = bearer.work_dir().to_path_buf();
    drop(bearer);
    assert_no_leaks(&bearer_dir);

    let dirs = [
        containerd.work_dir().to_path_buf(),
        registry.work_dir().to_path_buf(),
    ];
    timed("stop containerd", || {
        drop(containerd);
        Ok(())
    })?;
    drop(registry);
    for dir in &dirs {
        assert_no_leaks(dir);
    }
    Ok(())
}

#[test]
fn fault_proxy_corrupts_truncates_replaces_and_goes_down() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let layout = ImageSpec::new()
        .layer(
            LayerSpec::new()
                .generated_file("/blob", 256 * 1024, 3)
                .uncompressed(),
        )
        .build_layout()?;
    registry.push(&layout, "faulty:v1")?;
    let layer = layout.images()[0].layers[0].clone();
    let blob_path = format!("/v2/faulty/blobs/{}", layer.digest);
    let expected = std::fs::read(layout.blob_path(&layer.digest))?;

    let proxy = FaultProxy::in_front_of(&registry)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = reqwest::Client::new();
    let url = format!("{}{blob_path}", proxy.url());
    let get = |url: String| {
        let client = client.clone();
        runtime.block_on(async move {
            let response = client.get(&url).send().await?;
            let status = response.status().as_u16();
            let length = response.content_length();
            let body = response.bytes().await.map(|b| b.to_vec());
            Ok::<_, reqwest::Error>((status, length, body))
        })
    };

    // Clean pass-through.
    let (status, _, body) = get(url.clone())?;
    ensure!(status == 200 && body? == expected);

    // One flipped byte: same length, different digest.
    proxy.inject_times("/blobs/", Fault::flip_byte(), 1);
    let (status, _, body) = get(url.clone())?;
    let body = body?;
    ensure!(status == 200 && body.len() == expected.len() && body != expected);
    let differing = body.iter().zip(&expected).filter(|(a, b)| a != b).count();
    ensure!(differing == 1, "{differing} bytes differ");

    // Truncated: full Content-Length announced, fewer bytes, connection closed → body error.
    proxy.inject_times("/blobs/", Fault::Truncate { keep: 1000 }, 1);
    let (status, length, body) = get(url.clone())?;
    ensure!(status == 200 && length == Some(expected.len() as u64));
    ensure!(body.is_err(), "truncated body read without error");

    // Replaced body (malformed manifest).
    proxy.inject_times(
        "/manifests/",
        Fault::ReplaceBody {
            content_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            body: b"{not json".to_vec(),
        },
        1,
    );
    let manifest = runtime.block_on(async {
        let response = client
            .get(format!("{}/v2/faulty/manifests/v1", proxy.url()))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await?;
        let status = response.status().as_u16();
        response.bytes().await.map(|body| (status, body))
    })?;
    ensure!(
        manifest == (200, bytes::Bytes::from_static(b"{not json")),
        "{manifest:?}"
    );

    // 503 twice, then passes.
    proxy.inject_times("/blobs/", Fault::Status(503), 2);
    ensure!(get(url.clone())?.0 == 503 && get(url.clone())?.0 == 503);
    ensure!(get(url.clone())?.0 == 200);

    // HEAD keeps the upstream Content-Length.
    let head = runtime.block_on(client.head(&url).send())?;
    ensure!(head.status() == 200);
    let head_length = head
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok());
    ensure!(
        head_length == Some(expected.len().to_string().as_str()),
        "{head_length:?}"
    );

    // Down: connection refused; up again: passes.
    proxy.set_down(true);
    ensure!(std::net::TcpStream::connect(proxy.addr()).is_err());
    ensure!(get(url.clone()).is_err(), "request succeeded while down");
    proxy.set_down(false);
    ensure!(get(url.clone())?.0 == 200);

    // 8 answered + 1 dropped on the client's pooled connection while down (status 0).
    let log = proxy.request_log();
    ensure!(proxy.requests_matching("/blobs/") == 9, "{log:?}");
    ensure!(log.iter().filter(|r| r.status == 0).count() == 1, "{log:?}");
    ensure!(proxy.requests_matching("/manifests/") == 1);

    // Pushes go through too (request bodies forwarded, upload Locations rewritten).
    proxy.clear_faults();
    let pushed = push_layout(&layout, &proxy.host(), "via/proxy:v1", None)?;
    ensure!(pushed == layout.digest());
    ensure!(proxy.requests_matching("/v2/via/proxy/blobs/uploads/") > 0);
    ensure!(registry.raw_manifest("via/proxy:v1").is_ok());

    drop(proxy);
    let dir = registry.work_dir().to_path_buf();
    drop(registry);
    assert_no_leaks(&dir);
    Ok(())
}

#[test]
fn cargo_bin_names_the_override_variable_when_missing() {
    let err = skiff_tests::cargo_bin("no-such-skiff-binary").unwrap_err();
    assert!(
        err.to_string().contains("NO_SUCH_SKIFF_BINARY_BIN"),
        "{err}"
    );
}

/// The daemon runner's lifecycle (start, wait for the socket, SIGTERM, cleanup), with a
/// stand-in daemon until skiffd exists: a python3 script that serves the `--address` socket.
#[test]
fn daemon_runner_waits_for_socket_and_stops_cleanly() -> Result<()> {
    require(&["python3"])?;
    let scripts = tempfile::tempdir()?;
    let daemon = scripts.path().join("fake-skiffd");
    std::fs::write(
        &daemon,
        "#!/usr/bin/env python3\n\
         import signal, socket, sys, time\n\
         signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n\
         args = sys.argv\n\
         assert '--root' in args\n\
         time.sleep(0.3)\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind(args[args.index('--address') + 1])\n\
         s.listen()\n\
         while True:\n    s.accept()[0].close()\n",
    )?;
    std::fs::set_permissions(&daemon, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut skiffd = skiff_tests::Skiffd::start_with(skiff_tests::SkiffdOptions {
        binary: Some(daemon),
        ..Default::default()
    })?;
    ensure!(std::os::unix::net::UnixStream::connect(skiffd.socket()).is_ok());
    ensure!(skiffd.root().is_dir());
    let status = skiffd.stop().context("process")?;
    ensure!(status.success(), "fake daemon exited with {status}");
    let dir = skiffd.work_dir().to_path_buf();
    drop(skiffd);
    assert_no_leaks(&dir);
    Ok(())
}
