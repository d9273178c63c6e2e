//! End to end: the real `skiffd` and `skiff` binaries against real docker-registry instances (anonymous,
//! htpasswd, token auth), with images built by the test bed and pushed by skopeo.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use skiff_tests::{
    cargo_bin, require, sha256_digest, write_docker_config, write_hosts_toml, BuiltImage, Fault,
    FaultProxy, HostEntry, ImageSpec, LayerSpec, MultiPlatformSpec, Platform, Registry,
    RegistryAuth, Skiffd, SkiffdOptions,
};

const TOOLS: &[&str] = &["root", "docker-registry", "skopeo", "htpasswd", "busybox"];

/// An image with busybox and a multi-MiB file, so the layer blob is streamed in many pieces.
fn demo_image() -> ImageSpec {
    ImageSpec::new()
        .busybox()
        .layer(
            LayerSpec::new()
                .generated_file("data/large.bin", 5 << 20, 7)
                .file("etc/motd", "hello from skiff\n"),
        )
        .cmd(&["/bin/sh"])
}

/// Pushes `spec` as `repo:tag` and returns what was built.
fn push(registry: &Registry, spec: &ImageSpec, repo_and_tag: &str) -> Result<BuiltImage> {
    let layout = spec.build_layout()?;
    let digest = registry.push(&layout, repo_and_tag)?;
    ensure!(
        digest == layout.digest(),
        "pushed digest {digest} != layout digest"
    );
    Ok(layout.images()[0].clone())
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every digest in `skiff content ls -q`.
fn content_digests(skiffd: &Skiffd, namespace: &str) -> Result<BTreeSet<String>> {
    Ok(skiffd
        .skiff_ok(&["-n", namespace, "content", "ls", "-q"])?
        .lines()
        .map(str::to_string)
        .collect())
}

/// Files in the daemon's blob directory and its ingest directory.
fn store_files(skiffd: &Skiffd) -> Result<(BTreeSet<String>, Vec<String>)> {
    let content = skiffd.root().join("content");
    let list = |dir: &Path| -> Result<Vec<String>> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(err).with_context(|| format!("list {}", dir.display())),
        }
    };
    let blobs = list(&content.join("blobs/sha256"))?
        .into_iter()
        .map(|hex| format!("sha256:{hex}"))
        .collect();
    Ok((blobs, list(&content.join("ingest"))?))
}

/// Every blob file hashes to its name: nothing partial or corrupt was ever made visible.
fn assert_store_verified(skiffd: &Skiffd) -> Result<()> {
    let (blobs, ingest) = store_files(skiffd)?;
    ensure!(ingest.is_empty(), "ingest dir not empty: {ingest:?}");
    for digest in blobs {
        let hex = digest.trim_start_matches("sha256:");
        let bytes = std::fs::read(skiffd.root().join("content/blobs/sha256").join(hex))?;
        ensure!(
            sha256_digest(&bytes) == digest,
            "blob {digest} does not match its name"
        );
    }
    Ok(())
}

fn image_blobs(image: &BuiltImage) -> BTreeSet<String> {
    let mut blobs: BTreeSet<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    blobs.insert(image.manifest_digest.clone());
    blobs.insert(image.config_digest.clone());
    blobs
}

fn skiffd_with_config(toml: &str) -> Result<(tempfile::TempDir, Skiffd)> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("skiffd.toml");
    std::fs::write(&config, toml)?;
    let skiffd = Skiffd::start_with(SkiffdOptions {
        config: Some(config),
        ..Default::default()
    })?;
    Ok((dir, skiffd))
}

#[test]
fn pull_by_tag_and_digest_fetch_every_blob_then_remove() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let built = push(&registry, &demo_image(), "demo:v1")?;
    let skiffd = Skiffd::start()?;

    let by_tag = registry.reference("demo:v1");
    let out = skiffd.skiff_ok(&["image", "pull", "--plain-http", &by_tag])?;
    ensure!(
        out.contains(&format!("{by_tag}: pulled {}", built.manifest_digest)),
        "pull output: {out}"
    );
    let by_digest = format!("{}/demo@{}", registry.host(), built.manifest_digest);
    skiffd.skiff_ok(&["image", "pull", "--plain-http", &by_digest])?;

    let names = skiffd.skiff_ok(&["image", "ls", "-q"])?;
    let names: BTreeSet<&str> = names.lines().collect();
    ensure!(
        names == BTreeSet::from([by_tag.as_str(), by_digest.as_str()]),
        "image ls: {names:?}"
    );
    let table = skiffd.skiff_ok(&["image", "ls"])?;
    ensure!(
        table.starts_with("REF") && table.contains(&built.manifest_digest),
        "{table}"
    );

    // Every blob of the image is in the namespace, and fetching it gives bytes that hash to its name.
    let digests = content_digests(&skiffd, "default")?;
    ensure!(digests == image_blobs(&built), "content ls: {digests:?}");
    for digest in &digests {
        let output = skiffd.skiff(&["content", "fetch", digest])?;
        ensure!(
            output.status.success(),
            "fetch {digest}: {}",
            stderr(&output)
        );
        ensure!(
            sha256_digest(&output.stdout) == *digest,
            "fetch {digest} hashes differently"
        );
    }
    let info = skiffd.skiff_ok(&["content", "info", &built.layers[1].digest])?;
    ensure!(
        info.contains(&built.layers[1].size.to_string()),
        "content info: {info}"
    );
    ensure!(
        info.contains(&format!(
            "containerd.io/distribution.source.{}=demo",
            registry.host()
        )),
        "content info: {info}"
    );

    let detail = skiffd.skiff_ok(&["image", "info", &by_tag])?;
    ensure!(
        detail.contains(&built.config_digest),
        "image info: {detail}"
    );
    for layer in &built.layers {
        ensure!(
            detail.contains(&layer.digest),
            "image info lacks {}: {detail}",
            layer.digest
        );
    }

    // Removing one name keeps the shared blobs; removing the last one collects them all.
    skiffd.skiff_ok(&["image", "rm", &by_digest])?;
    ensure!(content_digests(&skiffd, "default")? == image_blobs(&built));
    skiffd.skiff_ok(&["image", "rm", &by_tag])?;
    ensure!(content_digests(&skiffd, "default")?.is_empty());
    let (blobs, _) = store_files(&skiffd)?;
    ensure!(
        blobs.is_empty(),
        "blobs left after the last image was removed: {blobs:?}"
    );
    Ok(())
}

#[test]
fn multi_arch_index_pulls_the_host_platform() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let layout = MultiPlatformSpec::host_and_foreign().build_layout()?;
    let index_digest = registry.push(&layout, "multi:1")?;
    let host = Platform::host();
    let native = layout
        .images()
        .iter()
        .find(|i| i.platform == host)
        .context("no host image in the index")?;
    let foreign = layout
        .images()
        .iter()
        .find(|i| i.platform != host)
        .context("no foreign image in the index")?;

    let skiffd = Skiffd::start()?;
    let name = registry.reference("multi:1");
    skiffd.skiff_ok(&["image", "pull", "--plain-http", &name])?;
    let detail = skiffd.skiff_ok(&["image", "info", &name])?;
    ensure!(
        detail.contains(&index_digest),
        "target is the index: {detail}"
    );
    ensure!(
        detail.contains(&native.manifest_digest),
        "host manifest: {detail}"
    );
    let platform = format!("Platform:  linux/{}", host.architecture);
    ensure!(detail.contains(&platform), "{platform} not in {detail}");

    let digests = content_digests(&skiffd, "default")?;
    let mut expected = image_blobs(native);
    expected.insert(index_digest);
    ensure!(
        digests == expected,
        "content: {digests:?} expected {expected:?}"
    );
    ensure!(!digests.contains(&foreign.manifest_digest));
    Ok(())
}

#[test]
fn basic_and_bearer_auth_with_flags_and_docker_config() -> Result<()> {
    require(TOOLS)?;
    for auth in [
        RegistryAuth::basic("alice", "wonderland"),
        RegistryAuth::bearer("bob", "builder"),
    ] {
        let registry = Registry::start(auth)?;
        let (user, password) = registry.credentials().context("credentials")?;
        let (user, password) = (user.to_string(), password.to_string());
        let built = push(&registry, &demo_image(), "private/app:1")?;
        let name = registry.reference("private/app:1");

        let skiffd = Skiffd::start()?;
        let denied = skiffd.skiff(&["image", "pull", "--plain-http", &name])?;
        ensure!(
            !denied.status.success(),
            "anonymous pull of {name} succeeded"
        );
        ensure!(
            stderr(&denied).contains("unauthorized"),
            "no clear error: {}",
            stderr(&denied)
        );
        let wrong = skiffd.skiff(&[
            "image",
            "pull",
            "--plain-http",
            "--user",
            "alice:nope",
            &name,
        ])?;
        ensure!(!wrong.status.success(), "wrong password accepted");
        ensure!(content_digests(&skiffd, "default")?.is_empty());
        assert_store_verified(&skiffd)?;

        // The password on stdin, out of `ps`.
        let piped = std::process::Command::new(skiff_tests::cargo_bin("skiff")?)
            .arg("--address")
            .arg(skiffd.socket())
            .args([
                "image",
                "pull",
                "--plain-http",
                "--user",
                &user,
                "--password-stdin",
                &name,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("piped stdin")
                    .write_all(format!("{password}\n").as_bytes())?;
                child.wait_with_output()
            })?;
        ensure!(
            piped.status.success(),
            "pull with --password-stdin: {piped:?}"
        );
        ensure!(content_digests(&skiffd, "default")? == image_blobs(&built));
        drop(skiffd);

        // The same pull with the credentials in the daemon's docker config.json.
        let config_dir = tempfile::tempdir()?;
        let docker_config =
            write_docker_config(config_dir.path(), &[(&registry.host(), &user, &password)])?;
        let (_dir, skiffd) = skiffd_with_config(&format!(
            "[registry]\ndocker_config = {:?}\n",
            docker_config.display().to_string()
        ))?;
        skiffd.skiff_ok(&["image", "pull", "--plain-http", &name])?;
        ensure!(content_digests(&skiffd, "default")? == image_blobs(&built));
        if registry.token_server().is_some() {
            let tokens = registry.token_requests();
            ensure!(
                tokens <= 6,
                "{tokens} token requests: tokens are not cached"
            );
        }
    }
    Ok(())
}

#[test]
fn hosts_toml_mirror_is_used_first_and_origin_when_it_is_down() -> Result<()> {
    require(TOOLS)?;
    let origin = Registry::start(RegistryAuth::Anonymous)?;
    let mirror_registry = Registry::start(RegistryAuth::Anonymous)?;
    let built = push(&origin, &demo_image(), "library/app:1")?;
    push(&mirror_registry, &demo_image(), "library/app:1")?;
    let mirror = FaultProxy::in_front_of(&mirror_registry)?;

    let certs = tempfile::tempdir()?;
    write_hosts_toml(
        certs.path(),
        &origin.host(),
        Some(&origin.url()),
        &[HostEntry::mirror(&mirror.url())],
    )?;
    let (_dir, skiffd) = skiffd_with_config(&format!(
        "[registry]\nconfig_path = {:?}\nmax_retries = 1\nconnect_timeout_secs = 2\n",
        certs.path().display().to_string()
    ))?;
    let name = origin.reference("library/app:1");
    skiffd.skiff_ok(&["image", "pull", &name])?;
    ensure!(
        mirror.requests_matching("/manifests/") > 0,
        "mirror not asked to resolve"
    );
    for layer in &built.layers {
        ensure!(
            mirror.requests_matching(&layer.digest) > 0,
            "layer {} not fetched from the mirror",
            layer.digest
        );
    }
    skiffd.skiff_ok(&["image", "rm", &name])?;

    mirror.set_down(true);
    mirror.reset_counts();
    skiffd.skiff_ok(&["image", "pull", &name])?;
    ensure!(content_digests(&skiffd, "default")? == image_blobs(&built));
    Ok(())
}

#[test]
fn tls_registry_is_trusted_through_hosts_toml_ca_or_skip_verify() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start_tls(RegistryAuth::Anonymous)?;
    let built = push(&registry, &demo_image(), "secure:1")?;
    let name = registry.reference("secure:1");
    let ca = registry.ca_pem().context("tls registry has a CA")?;

    // Nobody trusts the registry's CA by default: the pull fails naming the certificate problem.
    let skiffd = Skiffd::start()?;
    let untrusted = skiffd.skiff(&["image", "pull", &name])?;
    ensure!(
        !untrusted.status.success(),
        "pull from an untrusted TLS registry succeeded"
    );
    ensure!(
        stderr(&untrusted).to_lowercase().contains("certificate"),
        "{}",
        stderr(&untrusted)
    );
    assert_store_verified(&skiffd)?;
    drop(skiffd);

    for settings in [
        format!("ca = {:?}", ca.display().to_string()),
        "skip_verify = true".to_string(),
    ] {
        let certs = tempfile::tempdir()?;
        let dir = certs.path().join(registry.host());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hosts.toml"),
            format!("server = {:?}\n{settings}\n", registry.url()),
        )?;
        let (_dir, skiffd) = skiffd_with_config(&format!(
            "[registry]\nconfig_path = {:?}\n",
            certs.path().display().to_string()
        ))?;
        skiffd
            .skiff_ok(&["image", "pull", &name])
            .with_context(|| format!("hosts.toml with {settings}"))?;
        ensure!(content_digests(&skiffd, "default")? == image_blobs(&built));
    }
    Ok(())
}

/// What a bad registry answer must produce: a failed pull naming the problem, no image, no blob.
fn assert_pull_fails(skiffd: &Skiffd, reference: &str, expected: &[&str]) -> Result<()> {
    let output = skiffd.skiff(&["image", "pull", "--plain-http", reference])?;
    let message = stderr(&output).to_lowercase();
    ensure!(
        !output.status.success(),
        "pull of {reference} succeeded: {}",
        stdout(&output)
    );
    ensure!(
        expected.iter().any(|e| message.contains(e)),
        "pull of {reference}: expected one of {expected:?} in {message:?}"
    );
    ensure!(
        skiffd.skiff_ok(&["image", "ls", "-q"])?.is_empty(),
        "an image was recorded"
    );
    ensure!(
        content_digests(skiffd, "default")?.is_empty(),
        "content was referenced"
    );
    let (blobs, ingest) = store_files(skiffd)?;
    ensure!(blobs.is_empty(), "blobs left by a failed pull: {blobs:?}");
    ensure!(
        ingest.is_empty(),
        "partial ingest left by a failed pull: {ingest:?}"
    );
    Ok(())
}

#[test]
fn bad_registry_answers_fail_clearly_and_leave_no_blob() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let built = push(&registry, &demo_image(), "demo:v1")?;
    let proxy = FaultProxy::in_front_of(&registry)?;
    let (_dir, skiffd) = skiffd_with_config("[registry]\nmax_retries = 1\n")?;
    let name = format!("{}/demo:v1", proxy.host());
    let large_layer = &built.layers[1].digest;

    let cases: Vec<(&str, Fault, &[&str])> = vec![
        (
            large_layer,
            Fault::flip_byte(),
            &["digest mismatch", "does not match"],
        ),
        (
            large_layer,
            Fault::Truncate { keep: 1 << 20 },
            &["truncat", "ended", "incomplete"],
        ),
        (
            "/manifests/",
            Fault::ReplaceBody {
                content_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                body: b"{\"schemaVersion\": 2, \"layers\": [".to_vec(),
            },
            &["invalid manifest"],
        ),
        (
            "/manifests/",
            Fault::ReplaceBody {
                content_type: Some("application/vnd.example.unknown+json".into()),
                body: b"{\"schemaVersion\": 2}".to_vec(),
            },
            &["unsupported media type"],
        ),
        (
            "/manifests/",
            Fault::ReplaceBody {
                content_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                body: vec![b' '; 5 << 20],
            },
            &["too large", "exceeds"],
        ),
        ("/manifests/", Fault::Status(401), &["unauthorized"]),
        ("/manifests/", Fault::Status(403), &["forbidden", "denied"]),
        (&built.config_digest, Fault::Status(404), &["not found"]),
    ];
    for (path, fault, expected) in cases {
        proxy.clear_faults();
        proxy.inject(path, fault.clone());
        assert_pull_fails(&skiffd, &name, expected)
            .with_context(|| format!("fault {fault:?} on {path}"))?;
    }
    proxy.clear_faults();

    assert_pull_fails(
        &skiffd,
        &format!("{}/demo:missing", proxy.host()),
        &["not found"],
    )?;
    assert_pull_fails(&skiffd, "Upper/Case:tag", &["invalid reference"])?;
    assert_pull_fails(&skiffd, "127.0.0.1:1/x@sha256:abc", &["invalid reference"])?;

    // After all of that, a good pull through the same proxy works and every blob verifies.
    skiffd.skiff_ok(&["image", "pull", "--plain-http", &name])?;
    ensure!(content_digests(&skiffd, "default")? == image_blobs(&built));
    assert_store_verified(&skiffd)?;
    Ok(())
}

#[test]
fn namespaces_isolate_and_refuse_removal_while_not_empty() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let built = push(&registry, &demo_image(), "demo:v1")?;
    let name = registry.reference("demo:v1");
    let skiffd = Skiffd::start()?;

    skiffd.skiff_ok(&["namespace", "create", "team-a", "--label", "owner=ops"])?;
    let table = skiffd.skiff_ok(&["namespace", "ls"])?;
    ensure!(
        table.contains("team-a") && table.contains("owner=ops"),
        "{table}"
    );
    let again = skiffd.skiff(&["namespace", "create", "team-a"])?;
    ensure!(
        !again.status.success() && stderr(&again).contains("exists"),
        "{}",
        stderr(&again)
    );
    let invalid = skiffd.skiff(&["namespace", "create", "no/slash"])?;
    ensure!(!invalid.status.success(), "invalid namespace name accepted");
    // containerd's label limit: key and value together at most 4096 bytes; the error stays short.
    let huge = format!("big={}", "v".repeat(64 << 10));
    let refused = skiffd.skiff(&["namespace", "create", "team-b", "--label", &huge])?;
    ensure!(
        !refused.status.success()
            && stderr(&refused).contains("invalid label")
            && stderr(&refused).len() < 1000,
        "a 64 KiB label: {}",
        stderr(&refused)
    );
    let fits = format!("big={}", "v".repeat(4093));
    skiffd.skiff_ok(&["namespace", "create", "team-b", "--label", &fits])?;

    skiffd.skiff_ok(&["-n", "team-a", "image", "pull", "--plain-http", &name])?;
    ensure!(
        skiffd.skiff_ok(&["image", "ls", "-q"])?.is_empty(),
        "default sees team-a's image"
    );
    let hidden = skiffd.skiff(&["content", "fetch", &built.config_digest])?;
    ensure!(
        !hidden.status.success(),
        "default namespace reads team-a's content"
    );
    ensure!(stderr(&hidden).contains("not found"), "{}", stderr(&hidden));

    let refused = skiffd.skiff(&["namespace", "rm", "team-a"])?;
    ensure!(
        !refused.status.success(),
        "removing a namespace with images succeeded"
    );
    ensure!(
        stderr(&refused).contains("not empty"),
        "{}",
        stderr(&refused)
    );

    skiffd.skiff_ok(&["-n", "team-a", "image", "rm", &name])?;
    skiffd.skiff_ok(&["namespace", "rm", "team-a"])?;
    ensure!(!skiffd
        .skiff_ok(&["namespace", "ls", "-q"])?
        .contains("team-a"));
    let missing = skiffd.skiff(&["namespace", "rm", "team-a"])?;
    ensure!(!missing.status.success() && stderr(&missing).contains("not found"));
    Ok(())
}

#[test]
fn daemon_owns_its_root_keeps_state_and_stops_cleanly() -> Result<()> {
    require(TOOLS)?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    push(&registry, &demo_image(), "demo:v1")?;
    let name = registry.reference("demo:v1");
    let mut skiffd = Skiffd::start()?;

    let mode = std::fs::metadata(skiffd.socket())?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "socket mode {mode:o}");
    skiffd.skiff_ok(&["image", "pull", "--plain-http", &name])?;

    // A second daemon on the same root is refused with a clear message and exit status 1.
    let other_socket = skiffd.work_dir().join("other.sock");
    let second = Command::new(cargo_bin("skiffd")?)
        .arg("--root")
        .arg(skiffd.root())
        .arg("--address")
        .arg(&other_socket)
        .output()?;
    ensure!(
        second.status.code() == Some(1),
        "second skiffd: {:?}",
        second.status
    );
    ensure!(
        stderr(&second).contains("another skiffd holds the root"),
        "{}",
        stderr(&second)
    );
    ensure!(!other_socket.exists());

    // SIGTERM: exits 0 and removes its socket.
    let status = skiffd.stop().context("skiffd was not running")?;
    ensure!(
        status.success(),
        "skiffd exit status after SIGTERM: {status:?}"
    );
    ensure!(!skiffd.socket().exists(), "socket left after shutdown");

    // A new daemon on the same root still has the image and its content.
    let restarted = Command::new(cargo_bin("skiffd")?)
        .arg("--root")
        .arg(skiffd.root())
        .arg("--address")
        .arg(&other_socket)
        .spawn()?;
    let mut restarted = KillOnDrop(restarted);
    skiff_tests::wait_until(
        "restarted skiffd",
        std::time::Duration::from_secs(20),
        || Ok(std::os::unix::net::UnixStream::connect(&other_socket).is_ok()),
    )?;
    let skiff = |args: &[&str]| -> Result<Output> {
        Ok(Command::new(cargo_bin("skiff")?)
            .arg("--address")
            .arg(&other_socket)
            .args(args)
            .output()?)
    };
    let listed = skiff(&["image", "ls", "-q"])?;
    ensure!(
        stdout(&listed).trim() == name,
        "after restart: {}",
        stdout(&listed)
    );
    let version = skiff(&["version"])?;
    ensure!(stdout(&version).contains("Server:"), "{}", stdout(&version));
    restarted.terminate()?;
    Ok(())
}

#[test]
fn cli_errors_name_what_went_wrong() -> Result<()> {
    require(TOOLS)?;
    let missing = Command::new(cargo_bin("skiff")?)
        .args(["--address", "/nonexistent/skiffd.sock", "image", "ls"])
        .output()?;
    ensure!(!missing.status.success());
    ensure!(
        stderr(&missing).contains("cannot connect to skiffd at /nonexistent/skiffd.sock"),
        "{}",
        stderr(&missing)
    );
    let skiffd = Skiffd::start()?;
    let absent = skiffd.skiff(&["content", "fetch", &format!("sha256:{}", "0".repeat(64))])?;
    ensure!(!absent.status.success() && stderr(&absent).contains("not found"));
    let bad = skiffd.skiff(&["content", "info", "md5:1234"])?;
    ensure!(
        !bad.status.success() && stderr(&bad).contains("invalid digest"),
        "{}",
        stderr(&bad)
    );
    let no_image = skiffd.skiff(&["image", "info", "nothing:here"])?;
    ensure!(!no_image.status.success() && stderr(&no_image).contains("not found"));
    Ok(())
}

/// A child process that is terminated and reaped when the test ends, also on failure.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn terminate(&mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = self.0.wait()?;
        ensure!(
            status.success(),
            "skiffd exit status after SIGTERM: {status:?}"
        );
        Ok(())
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
