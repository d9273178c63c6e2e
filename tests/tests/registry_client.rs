//! End-to-end tests of skiff's OCI registry client (`skiff_registry::RegistryClient`) against
//! real `docker-registry` instances started by the test bed kit: resolving tags, digests and
//! multi-platform indexes, exact range reads and verified whole-blob streams, Basic and Bearer
//! authentication (with token caching), `hosts.toml` mirrors with fallback to the origin, and the
//! client's answers to corrupted, truncated, replaced or refused responses from a fault proxy.

use std::ops::Range;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use skiff_registry::{
    BlobStream, Credentials, Descriptor, Platform as ClientPlatform, Reference, RegistryClient,
    RegistryConfig, RegistryError, ResolvedImage, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use skiff_tests::{
    require, sha256_digest, write_docker_config, write_hosts_toml, BuiltImage, Fault, FaultProxy,
    HostEntry, ImageSpec, LayerSpec, MultiPlatformSpec, OciLayout, Platform, Registry,
    RegistryAuth,
};

/// The typed digest of a descriptor's (what `read_range` takes).
fn digest_of(digest: &impl AsRef<str>) -> skiff_registry::Digest {
    digest.as_ref().parse().expect("a sha256 digest")
}

/// Size of the generated file in the big uncompressed layer: several MiB, not a multiple of 512.
const BIG_FILE_LEN: usize = 3 * 1024 * 1024 + 12_345;
const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Two layers: a big uncompressed one (so layer offsets are plain tar offsets) and a small gzip one.
fn test_image() -> ImageSpec {
    ImageSpec::new()
        .layer(
            LayerSpec::new()
                .generated_file("/data/big.bin", BIG_FILE_LEN, 7)
                .uncompressed(),
        )
        .layer(
            LayerSpec::new()
                .file("/etc/motd", "hello from skiff\n")
                .generated_file("/data/small.bin", 64 * 1024, 8),
        )
        .env("SKIFF_REGISTRY_CLIENT_TEST=1")
}

/// A client configuration that never reads the user's own `~/.docker/config.json`: it points at
/// an empty one in `dir`. Plain HTTP, as the kit's registries speak.
fn isolated_config(dir: &Path) -> Result<RegistryConfig> {
    let docker_config = write_docker_config(&dir.join("no-auths"), &[])?;
    Ok(RegistryConfig {
        docker_config: Some(docker_config),
        plain_http: true,
        ..RegistryConfig::default()
    })
}

fn parse(reference: &str) -> Result<Reference> {
    reference
        .parse()
        .with_context(|| format!("parse reference {reference:?}"))
}

fn client_platform(platform: &Platform) -> ClientPlatform {
    ClientPlatform {
        os: platform.os.clone(),
        architecture: platform.architecture.clone(),
        variant: platform.variant.clone(),
    }
}

/// The bytes of a blob as the kit wrote them into the layout.
fn layout_blob(layout: &OciLayout, digest: &str) -> Result<Vec<u8>> {
    let path = layout.blob_path(digest);
    std::fs::read(&path).with_context(|| format!("read {}", path.display()))
}

/// Asserts that `resolved` describes exactly the image the kit built.
fn assert_matches_image(resolved: &ResolvedImage, image: &BuiltImage) {
    assert_eq!(
        resolved.manifest.digest().to_string(),
        image.manifest_digest
    );
    assert_eq!(resolved.manifest.size(), image.manifest.len() as u64);
    assert_eq!(resolved.manifest_bytes.as_ref(), image.manifest.as_slice());
    assert_eq!(
        resolved.manifest.media_type().to_string(),
        MEDIA_TYPE_OCI_MANIFEST
    );
    assert_eq!(resolved.config.digest().to_string(), image.config_digest);
    assert_eq!(resolved.config.size(), image.config.len() as u64);
    assert_eq!(resolved.config_bytes.as_ref(), image.config.as_slice());
    assert_eq!(
        resolved.image_manifest.config().digest().to_string(),
        image.config_digest
    );
    let layers: Vec<(String, u64, String)> = resolved
        .image_manifest
        .layers()
        .iter()
        .map(|l| (l.digest().to_string(), l.size(), l.media_type().to_string()))
        .collect();
    let expected: Vec<(String, u64, String)> = image
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size, l.media_type.clone()))
        .collect();
    assert_eq!(layers, expected);
}

/// The layer descriptor at `index` of a resolved image.
fn layer(resolved: &ResolvedImage, index: usize) -> Descriptor {
    resolved.image_manifest.layers()[index].clone()
}

/// Reads a blob stream to its end: the bytes delivered and the error it ended with, if any. Also
/// checks that nothing follows an error.
async fn drain(mut stream: BlobStream) -> (Vec<u8>, Option<RegistryError>) {
    let mut bytes = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(e) => {
                assert!(
                    stream.next().await.is_none(),
                    "the blob stream went on after its error {e}"
                );
                return (bytes, Some(e));
            }
        }
    }
    (bytes, None)
}

/// Fetches a whole blob and requires the stream to end cleanly.
async fn fetch_whole(
    client: &RegistryClient,
    reference: &Reference,
    descriptor: &Descriptor,
) -> Result<Vec<u8>> {
    let stream = client.fetch_blob(reference, descriptor).await?;
    let (bytes, error) = drain(stream).await;
    if let Some(e) = error {
        return Err(e).context(format!("stream of {}", descriptor.digest()));
    }
    Ok(bytes)
}

/// The error of a call that must fail.
fn expect_err<T>(result: Result<T, RegistryError>, what: &str) -> RegistryError {
    match result {
        Ok(_) => panic!("{what} succeeded but must fail"),
        Err(e) => e,
    }
}

/// The statuses the proxy answered for requests whose path contains `path_contains`.
fn statuses(proxy: &FaultProxy, path_contains: &str) -> Vec<u16> {
    proxy
        .request_log()
        .iter()
        .filter(|r| r.path.contains(path_contains))
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn resolves_by_tag_and_by_digest_on_anonymous_registry() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let layout = test_image().build_layout()?;
    let pushed = registry.push(&layout, "plain/app:v1")?;
    assert_eq!(pushed, layout.digest());
    let image = &layout.images()[0];
    let dir = tempfile::tempdir()?;
    let client = RegistryClient::new(isolated_config(dir.path())?)?;

    let by_tag = parse(&registry.reference("plain/app:v1"))?;
    let resolved = client.resolve(&by_tag).await?;
    assert_eq!(resolved.target.digest().to_string(), pushed);
    assert_eq!(
        resolved.target.media_type().to_string(),
        MEDIA_TYPE_OCI_MANIFEST
    );
    assert_eq!(resolved.target.size(), image.manifest.len() as u64);
    assert_eq!(resolved.target_bytes.as_ref(), image.manifest.as_slice());
    assert_eq!(sha256_digest(&resolved.target_bytes), pushed);
    assert_eq!(resolved.target.digest(), resolved.manifest.digest());
    assert_matches_image(&resolved, image);
    assert_eq!(resolved.reference.registry(), registry.host());
    assert_eq!(resolved.reference.repository(), "plain/app");
    assert_eq!(resolved.reference.tag(), Some("v1"));
    assert_eq!(
        resolved.reference.digest().map(ToString::to_string),
        Some(pushed.clone())
    );
    let config: serde_json::Value = serde_json::from_slice(&resolved.config_bytes)?;
    assert_eq!(config["architecture"], Platform::host().architecture);
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(image
            .layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>())
    );
    ensure!(
        config["config"]["Env"]
            .as_array()
            .is_some_and(|env| env.iter().any(|e| e == "SKIFF_REGISTRY_CLIENT_TEST=1")),
        "config env: {}",
        config["config"]["Env"]
    );

    let by_digest = parse(&registry.reference(&format!("plain/app@{pushed}")))?;
    let pinned = client.resolve(&by_digest).await?;
    assert_eq!(pinned.target.digest().to_string(), pushed);
    assert_eq!(pinned.target_bytes, resolved.target_bytes);
    assert_matches_image(&pinned, image);
    assert_eq!(
        pinned.reference.digest().map(ToString::to_string),
        Some(pushed.clone())
    );

    // The manifest again by its descriptor, and the small layer as a whole.
    let manifest = client.fetch_manifest(&by_tag, &resolved.manifest).await?;
    assert_eq!(manifest.as_ref(), image.manifest.as_slice());
    let small = layer(&resolved, 1);
    assert_eq!(small.media_type().to_string(), MEDIA_TYPE_LAYER_GZIP);
    assert_eq!(
        fetch_whole(&client, &by_tag, &small).await?,
        layout_blob(&layout, &image.layers[1].digest)?
    );

    // An unknown tag is NotFound, naming the manifest URL.
    let missing = parse(&registry.reference("plain/app:missing"))?;
    match expect_err(client.resolve(&missing).await, "resolving a missing tag") {
        RegistryError::NotFound { url } => {
            assert!(url.contains("/v2/plain/app/manifests/missing"), "{url}")
        }
        other => panic!("missing tag: expected NotFound, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn resolve_picks_the_platform_from_a_multi_arch_index() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let layout = MultiPlatformSpec::host_and_foreign().build_layout()?;
    ensure!(layout.is_index());
    let pushed = registry.push(&layout, "multi/app:v1")?;
    assert_eq!(pushed, layout.digest());
    let host = Platform::host();
    let foreign = Platform::foreign();
    let host_image = layout
        .images()
        .iter()
        .find(|i| i.platform == host)
        .context("host image")?;
    let foreign_image = layout
        .images()
        .iter()
        .find(|i| i.platform == foreign)
        .context("foreign image")?;
    assert_ne!(host_image.manifest_digest, foreign_image.manifest_digest);

    let dir = tempfile::tempdir()?;
    let client = RegistryClient::new(isolated_config(dir.path())?)?;
    let reference = parse(&registry.reference("multi/app:v1"))?;

    let resolved = client.resolve(&reference).await?;
    assert_eq!(resolved.target.digest().to_string(), pushed);
    assert_eq!(
        resolved.target.media_type().to_string(),
        MEDIA_TYPE_OCI_INDEX
    );
    assert_eq!(sha256_digest(&resolved.target_bytes), pushed);
    assert_eq!(
        resolved.target_bytes.as_ref(),
        layout_blob(&layout, &pushed)?.as_slice()
    );
    assert_matches_image(&resolved, host_image);
    let config: serde_json::Value = serde_json::from_slice(&resolved.config_bytes)?;
    assert_eq!(config["architecture"], host.architecture);
    // The host's only layer says "host".
    let host_layer = fetch_whole(&client, &reference, &layer(&resolved, 0)).await?;
    assert_eq!(
        host_layer,
        layout_blob(&layout, &host_image.layers[0].digest)?
    );

    let other = client
        .resolve_platform(&reference, &client_platform(&foreign))
        .await?;
    assert_eq!(other.target.digest().to_string(), pushed);
    assert_eq!(other.target_bytes, resolved.target_bytes);
    assert_matches_image(&other, foreign_image);
    let config: serde_json::Value = serde_json::from_slice(&other.config_bytes)?;
    assert_eq!(config["architecture"], foreign.architecture);
    let foreign_layer = fetch_whole(&client, &reference, &layer(&other, 0)).await?;
    assert_eq!(
        foreign_layer,
        layout_blob(&layout, &foreign_image.layers[0].digest)?
    );
    assert_ne!(foreign_layer, host_layer);

    // The same choice when the index is pinned by digest.
    let pinned = parse(&registry.reference(&format!("multi/app@{pushed}")))?;
    let other_pinned = client
        .resolve_platform(&pinned, &client_platform(&foreign))
        .await?;
    assert_matches_image(&other_pinned, foreign_image);

    // The other platform's manifest by descriptor, as a puller of several platforms would.
    let foreign_manifest = client.fetch_manifest(&reference, &other.manifest).await?;
    assert_eq!(foreign_manifest.as_ref(), foreign_image.manifest.as_slice());

    // A platform the index does not have.
    let windows = ClientPlatform {
        os: "windows".to_string(),
        architecture: host.architecture.clone(),
        variant: None,
    };
    match expect_err(
        client.resolve_platform(&reference, &windows).await,
        "resolving for windows",
    ) {
        RegistryError::PlatformNotFound {
            reference: named,
            platform,
        } => {
            assert!(named.contains("multi/app"), "{named}");
            assert!(platform.contains("windows"), "{platform}");
        }
        other => panic!("windows: expected PlatformNotFound, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn range_reads_return_exactly_the_requested_bytes() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let layout = test_image().build_layout()?;
    registry.push(&layout, "ranges/app:v1")?;
    let image = &layout.images()[0];
    let dir = tempfile::tempdir()?;
    let client = RegistryClient::new(isolated_config(dir.path())?)?;
    let reference = parse(&registry.reference("ranges/app:v1"))?;
    let resolved = client.resolve(&reference).await?;

    let big = layer(&resolved, 0);
    assert_eq!(big.media_type().to_string(), MEDIA_TYPE_LAYER_TAR);
    let blob = layout_blob(&layout, &image.layers[0].digest)?;
    let n = blob.len() as u64;
    assert_eq!(n, big.size());
    ensure!(n > BIG_FILE_LEN as u64, "the tar holds the whole file");
    // The generated file is in the uncompressed tar as-is, at a 512-byte-aligned offset.
    let contents = skiff_tests::generated_bytes(7, BIG_FILE_LEN);
    let file_offset = (0..blob.len() - BIG_FILE_LEN)
        .step_by(512)
        .find(|&o| blob[o..o + 64] == contents[..64])
        .context("generated file in the tar")? as u64;

    let ranges: Vec<(&str, Range<u64>)> = vec![
        ("start", 0..64 * 1024),
        ("first byte", 0..1),
        ("one byte", 777_777..777_778),
        ("middle", n / 2 - 300_001..n / 2 + 500_003),
        ("unaligned", 4097..1_048_577 + 13),
        ("last byte", n - 1..n),
        ("tail", n - 100_000..n),
        ("whole blob", 0..n),
        (
            "the generated file",
            file_offset..file_offset + BIG_FILE_LEN as u64,
        ),
    ];
    for (what, range) in ranges {
        let bytes = client
            .read_range(&reference, &digest_of(big.digest()), range.clone())
            .await
            .with_context(|| format!("{what} range {range:?}"))?;
        assert_eq!(
            bytes.len() as u64,
            range.end - range.start,
            "{what} range {range:?}: length"
        );
        assert!(
            bytes.as_ref() == &blob[range.start as usize..range.end as usize],
            "{what} range {range:?}: wrong bytes"
        );
    }
    let file = client
        .read_range(
            &reference,
            &digest_of(big.digest()),
            file_offset..file_offset + BIG_FILE_LEN as u64,
        )
        .await?;
    assert!(file.as_ref() == contents.as_slice(), "file contents");

    // An empty range needs no request; a reversed one is refused.
    let empty = client
        .read_range(&reference, &digest_of(big.digest()), 10..10)
        .await?;
    assert!(empty.is_empty());
    let (start, end) = (10, 5);
    match expect_err(
        client
            .read_range(&reference, &digest_of(big.digest()), start..end)
            .await,
        "reversed range",
    ) {
        RegistryError::InvalidRange { start: 10, end: 5 } => {}
        other => panic!("reversed range: expected InvalidRange, got {other:?}"),
    }

    // Ranges of the compressed layer are raw blob bytes too.
    let small = layer(&resolved, 1);
    let small_blob = layout_blob(&layout, &image.layers[1].digest)?;
    let m = small_blob.len() as u64;
    for range in [0..1, m / 3..m / 3 + 1000, m - 1..m, 0..m] {
        let bytes = client
            .read_range(&reference, &digest_of(small.digest()), range.clone())
            .await?;
        assert!(
            bytes.as_ref() == &small_blob[range.start as usize..range.end as usize],
            "gzip layer range {range:?}"
        );
    }

    // The whole blob streamed, in more than one chunk, equals the layout's blob.
    let mut stream = client.fetch_blob(&reference, &big).await?;
    let mut streamed = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        streamed.extend_from_slice(&chunk.context("blob stream chunk")?);
        chunks += 1;
    }
    ensure!(chunks > 1, "a {n}-byte blob arrived in {chunks} chunk(s)");
    assert!(streamed == blob, "streamed blob differs");
    assert_eq!(fetch_whole(&client, &reference, &small).await?, small_blob);
    Ok(())
}

#[tokio::test]
async fn basic_auth_with_explicit_and_docker_config_credentials() -> Result<()> {
    require(&["docker-registry", "skopeo", "htpasswd"])?;
    let registry = Registry::start(RegistryAuth::basic("alice", "s3cret"))?;
    let layout = test_image().build_layout()?;
    registry.push(&layout, "private/app:v1")?;
    let image = &layout.images()[0];
    let small_blob = layout_blob(&layout, &image.layers[1].digest)?;
    let big_blob = layout_blob(&layout, &image.layers[0].digest)?;
    let dir = tempfile::tempdir()?;
    let reference = parse(&registry.reference("private/app:v1"))?;
    let credentials = |password: &str| Credentials {
        username: "alice".to_string(),
        password: password.to_string(),
    };

    // Explicit credentials.
    let explicit = RegistryClient::new(RegistryConfig {
        credentials: Some(credentials("s3cret")),
        ..isolated_config(dir.path())?
    })?;
    let resolved = explicit.resolve(&reference).await?;
    assert_eq!(resolved.target.digest().to_string(), layout.digest());
    assert_matches_image(&resolved, image);
    let bytes = explicit
        .read_range(
            &reference,
            &digest_of(layer(&resolved, 0).digest()),
            1000..250_000,
        )
        .await?;
    assert!(bytes.as_ref() == &big_blob[1000..250_000]);
    assert_eq!(
        fetch_whole(&explicit, &reference, &layer(&resolved, 1)).await?,
        small_blob
    );

    // Credentials from a docker config.json for the registry's host:port.
    let docker_config = write_docker_config(
        &dir.path().join("docker"),
        &[(&registry.host(), "alice", "s3cret")],
    )?;
    let from_file = RegistryClient::new(RegistryConfig {
        docker_config: Some(docker_config.clone()),
        ..isolated_config(dir.path())?
    })?;
    let resolved = from_file.resolve(&reference).await?;
    assert_matches_image(&resolved, image);
    let bytes = from_file
        .read_range(
            &reference,
            &digest_of(layer(&resolved, 1).digest()),
            0..1024,
        )
        .await?;
    assert!(bytes.as_ref() == &small_blob[..1024]);

    let assert_unauthorized = |error: RegistryError, what: &str| match error {
        RegistryError::Unauthorized { host, url } => {
            assert_eq!(host, registry.host(), "{what}");
            assert!(url.contains("/v2/private/app/"), "{what}: {url}");
        }
        other => panic!("{what}: expected Unauthorized, got {other:?}"),
    };

    // No credentials at all.
    let anonymous = RegistryClient::new(isolated_config(dir.path())?)?;
    assert_unauthorized(
        expect_err(anonymous.resolve(&reference).await, "anonymous resolve"),
        "anonymous resolve",
    );
    assert_unauthorized(
        expect_err(
            anonymous
                .read_range(&reference, &digest_of(layer(&resolved, 1).digest()), 0..10)
                .await,
            "anonymous range read",
        ),
        "anonymous range read",
    );
    assert_unauthorized(
        expect_err(
            anonymous
                .fetch_blob(&reference, &layer(&resolved, 1))
                .await
                .map(|_| ()),
            "anonymous blob fetch",
        ),
        "anonymous blob fetch",
    );

    // Wrong explicit credentials; they also take precedence over the correct config.json.
    let wrong = RegistryClient::new(RegistryConfig {
        credentials: Some(credentials("wrong")),
        ..isolated_config(dir.path())?
    })?;
    assert_unauthorized(
        expect_err(wrong.resolve(&reference).await, "wrong password"),
        "wrong password",
    );
    let wrong_over_file = RegistryClient::new(RegistryConfig {
        credentials: Some(credentials("wrong")),
        docker_config: Some(docker_config),
        ..isolated_config(dir.path())?
    })?;
    assert_unauthorized(
        expect_err(
            wrong_over_file.resolve(&reference).await,
            "wrong explicit password over a correct config.json",
        ),
        "wrong explicit password over a correct config.json",
    );
    // A config.json entry with the wrong password.
    let wrong_file = write_docker_config(
        &dir.path().join("docker-wrong"),
        &[(&registry.host(), "alice", "nope")],
    )?;
    let wrong_from_file = RegistryClient::new(RegistryConfig {
        docker_config: Some(wrong_file),
        ..isolated_config(dir.path())?
    })?;
    assert_unauthorized(
        expect_err(
            wrong_from_file.resolve(&reference).await,
            "wrong config.json password",
        ),
        "wrong config.json password",
    );
    Ok(())
}

#[tokio::test]
async fn bearer_auth_fetches_and_caches_tokens() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let registry = Registry::start(RegistryAuth::bearer("bob", "hunter2"))?;
    let token_server = registry.token_server().context("token server")?;
    let layout = test_image().build_layout()?;
    registry.push(&layout, "secure/app:v1")?;
    let image = &layout.images()[0];
    let big_blob = layout_blob(&layout, &image.layers[0].digest)?;
    let small_blob = layout_blob(&layout, &image.layers[1].digest)?;
    let dir = tempfile::tempdir()?;
    let reference = parse(&registry.reference("secure/app:v1"))?;

    let tokens_before = registry.token_requests();
    let log_before = token_server.request_log().len();
    let client = RegistryClient::new(RegistryConfig {
        credentials: Some(Credentials {
            username: "bob".to_string(),
            password: "hunter2".to_string(),
        }),
        ..isolated_config(dir.path())?
    })?;
    let resolved = client.resolve(&reference).await?;
    assert_eq!(resolved.target.digest().to_string(), layout.digest());
    assert_matches_image(&resolved, image);
    let again = client.resolve(&reference).await?;
    assert_eq!(again.target_bytes, resolved.target_bytes);
    let big = layer(&resolved, 0);
    let n = big.size();
    for i in 0..10u64 {
        let start = i * (n / 10);
        let range = start..(start + 4096 + i * 1000).min(n);
        let bytes = client
            .read_range(&reference, &digest_of(big.digest()), range.clone())
            .await?;
        assert!(
            bytes.as_ref() == &big_blob[range.start as usize..range.end as usize],
            "bearer range {range:?}"
        );
    }
    assert_eq!(
        fetch_whole(&client, &reference, &layer(&resolved, 1)).await?,
        small_blob
    );
    // A clone shares the token cache.
    let clone = client.clone();
    clone.resolve(&reference).await?;

    let used = registry.token_requests() - tokens_before;
    ensure!(
        (1..=3).contains(&used),
        "2 resolves + 10 ranges + 1 blob + 1 resolve by a clone took {used} token requests"
    );
    let log = token_server.request_log();
    for request in &log[log_before..] {
        assert_eq!(request.method, "GET", "{request:?}");
        assert_eq!(request.status, 200, "{request:?}");
        assert_eq!(request.user.as_deref(), Some("bob"), "{request:?}");
        ensure!(
            request
                .scopes
                .iter()
                .any(|s| s == "repository:secure/app:pull"),
            "scopes of {request:?}"
        );
    }

    // Wrong password: the token server refuses it.
    let wrong = RegistryClient::new(RegistryConfig {
        credentials: Some(Credentials {
            username: "bob".to_string(),
            password: "nope".to_string(),
        }),
        ..isolated_config(dir.path())?
    })?;
    match expect_err(wrong.resolve(&reference).await, "wrong bearer password") {
        RegistryError::Unauthorized { host, .. } => assert_eq!(host, registry.host()),
        other => panic!("wrong bearer password: expected Unauthorized, got {other:?}"),
    }
    let last = token_server.request_log().pop().context("token log")?;
    assert_eq!(last.status, 401, "{last:?}");

    // No credentials: an anonymous token carries no access, the registry refuses it.
    let anonymous = RegistryClient::new(isolated_config(dir.path())?)?;
    match expect_err(anonymous.resolve(&reference).await, "anonymous bearer") {
        RegistryError::Unauthorized { host, url } => {
            assert_eq!(host, registry.host());
            assert!(url.contains("/v2/secure/app/manifests/v1"), "{url}");
        }
        other => panic!("anonymous bearer: expected Unauthorized, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn hosts_toml_mirror_is_used_and_origin_takes_over_when_it_is_down() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let origin = Registry::start(RegistryAuth::Anonymous)?;
    let mirror = Registry::start(RegistryAuth::Anonymous)?;
    let layout = test_image().build_layout()?;
    origin.push(&layout, "mirrored/app:v1")?;
    mirror.push(&layout, "mirrored/app:v1")?;
    let image = &layout.images()[0];
    let big_blob = layout_blob(&layout, &image.layers[0].digest)?;
    let small_blob = layout_blob(&layout, &image.layers[1].digest)?;
    let origin_proxy = FaultProxy::in_front_of(&origin)?;
    let mirror_proxy = FaultProxy::in_front_of(&mirror)?;

    let dir = tempfile::tempdir()?;
    let certs_d = dir.path().join("certs.d");
    write_hosts_toml(
        &certs_d,
        &origin_proxy.host(),
        None,
        &[HostEntry::mirror(&mirror_proxy.url())],
    )?;
    let client = RegistryClient::new(RegistryConfig {
        hosts_dir: Some(certs_d),
        ..isolated_config(dir.path())?
    })?;
    let reference = parse(&format!("{}/mirrored/app:v1", origin_proxy.host()))?;

    let resolved = client.resolve(&reference).await?;
    assert_eq!(resolved.target.digest().to_string(), layout.digest());
    assert_matches_image(&resolved, image);
    let big = layer(&resolved, 0);
    let bytes = client
        .read_range(&reference, &digest_of(big.digest()), 5000..905_000)
        .await?;
    assert!(bytes.as_ref() == &big_blob[5000..905_000]);
    assert_eq!(
        fetch_whole(&client, &reference, &layer(&resolved, 1)).await?,
        small_blob
    );

    assert_eq!(
        origin_proxy.requests_matching(""),
        0,
        "the origin was contacted: {:?}",
        origin_proxy.request_log()
    );
    let mirror_log = mirror_proxy.request_log();
    ensure!(
        mirror_proxy.requests_matching("/v2/mirrored/app/manifests/v1") >= 1
            && mirror_proxy.requests_matching(&format!("/blobs/{}", big.digest())) >= 1
            && mirror_proxy.requests_matching(&format!("/blobs/{}", image.config_digest)) >= 1,
        "mirror requests: {mirror_log:?}"
    );
    // Mirrors are told the upstream namespace, as containerd does.
    let ns = format!(
        "ns={}",
        url::form_urlencoded::byte_serialize(origin_proxy.host().as_bytes()).collect::<String>()
    );
    for request in mirror_log.iter().filter(|r| r.path.contains("/mirrored/")) {
        ensure!(request.path.contains(&ns), "{request:?} lacks {ns}");
        ensure!(
            request.status == 200 || request.status == 206,
            "{request:?}"
        );
    }

    // The mirror goes away: the same client falls back to the origin.
    mirror_proxy.set_down(true);
    mirror_proxy.reset_counts();
    let resolved = client.resolve(&reference).await?;
    assert_eq!(resolved.target.digest().to_string(), layout.digest());
    assert_matches_image(&resolved, image);
    let bytes = client
        .read_range(&reference, &digest_of(big.digest()), 2_000_000..2_100_001)
        .await?;
    assert!(bytes.as_ref() == &big_blob[2_000_000..2_100_001]);
    assert_eq!(
        fetch_whole(&client, &reference, &layer(&resolved, 1)).await?,
        small_blob
    );
    let origin_log = origin_proxy.request_log();
    ensure!(
        origin_proxy.requests_matching("/v2/mirrored/app/manifests/v1") >= 1
            && origin_proxy.requests_matching(&format!("/blobs/{}", big.digest())) >= 1,
        "origin requests after the mirror went down: {origin_log:?}"
    );
    for request in &origin_log {
        ensure!(
            !request.path.contains("ns="),
            "the origin got a mirror query: {request:?}"
        );
    }
    Ok(())
}

/// An anonymous registry with `test_image()` pushed as `faulty/app:v1`, and a fault proxy in front.
struct FaultBed {
    _dir: tempfile::TempDir,
    layout: OciLayout,
    proxy: FaultProxy,
    registry: Registry,
    client: RegistryClient,
    /// `PROXY/faulty/app:v1`
    reference: Reference,
}

impl FaultBed {
    fn start() -> Result<Self> {
        let registry = Registry::start(RegistryAuth::Anonymous)?;
        let layout = test_image().build_layout()?;
        registry.push(&layout, "faulty/app:v1")?;
        let proxy = FaultProxy::in_front_of(&registry)?;
        let dir = tempfile::tempdir()?;
        let client = RegistryClient::new(isolated_config(dir.path())?)?;
        let reference = parse(&format!("{}/faulty/app:v1", proxy.host()))?;
        Ok(Self {
            _dir: dir,
            layout,
            proxy,
            registry,
            client,
            reference,
        })
    }

    fn image(&self) -> &BuiltImage {
        &self.layout.images()[0]
    }

    fn blob(&self, layer: usize) -> Result<Vec<u8>> {
        layout_blob(&self.layout, &self.image().layers[layer].digest)
    }

    /// `PROXY/faulty/app@DIGEST`.
    fn pinned(&self, digest: &str) -> Result<Reference> {
        parse(&format!("{}/faulty/app@{digest}", self.proxy.host()))
    }
}

#[tokio::test]
async fn corrupted_blobs_and_manifests_are_digest_mismatches() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let bed = FaultBed::start()?;
    let resolved = bed.client.resolve(&bed.reference).await?;
    assert_matches_image(&resolved, bed.image());
    let big = layer(&resolved, 0);
    let manifest_digest = bed.image().manifest_digest.clone();

    // One flipped byte in the middle of a layer: every byte arrives, then the stream fails.
    bed.proxy
        .inject(&format!("/blobs/{}", big.digest()), Fault::flip_byte());
    let stream = bed.client.fetch_blob(&bed.reference, &big).await?;
    let (bytes, error) = drain(stream).await;
    assert_eq!(bytes.len() as u64, big.size());
    assert!(bytes != bed.blob(0)?, "the proxy did not corrupt the blob");
    match error {
        Some(RegistryError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, big.digest().to_string());
            assert_eq!(actual, sha256_digest(&bytes));
        }
        other => panic!("flipped layer byte: expected DigestMismatch, got {other:?}"),
    }
    // The first byte flipped instead.
    bed.proxy.clear_faults();
    bed.proxy.inject(
        &format!("/blobs/{}", big.digest()),
        Fault::FlipByte { offset: Some(0) },
    );
    let (_, error) = drain(bed.client.fetch_blob(&bed.reference, &big).await?).await;
    assert!(
        matches!(error, Some(RegistryError::DigestMismatch { .. })),
        "flipped first byte: {error:?}"
    );
    bed.proxy.clear_faults();
    assert_eq!(
        fetch_whole(&bed.client, &bed.reference, &big).await?,
        bed.blob(0)?
    );

    // A flipped byte in the config blob fails the resolve.
    bed.proxy.inject(
        &format!("/blobs/{}", bed.image().config_digest),
        Fault::flip_byte(),
    );
    match expect_err(bed.client.resolve(&bed.reference).await, "corrupt config") {
        RegistryError::DigestMismatch { expected, .. } => {
            assert_eq!(expected, bed.image().config_digest)
        }
        other => panic!("corrupt config: expected DigestMismatch, got {other:?}"),
    }
    bed.proxy.clear_faults();

    // A flipped byte in the manifest fetched by digest.
    bed.proxy.inject("/manifests/", Fault::flip_byte());
    let pinned = bed.pinned(&manifest_digest)?;
    match expect_err(bed.client.resolve(&pinned).await, "corrupt pinned manifest") {
        RegistryError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, manifest_digest);
            assert_ne!(actual, manifest_digest);
        }
        other => panic!("corrupt pinned manifest: expected DigestMismatch, got {other:?}"),
    }
    match expect_err(
        bed.client
            .fetch_manifest(&bed.reference, &resolved.manifest)
            .await,
        "corrupt manifest by descriptor",
    ) {
        RegistryError::DigestMismatch { expected, .. } => assert_eq!(expected, manifest_digest),
        other => panic!("corrupt manifest by descriptor: expected DigestMismatch, got {other:?}"),
    }
    // By tag, the registry's Docker-Content-Digest header gives it away.
    match expect_err(
        bed.client.resolve(&bed.reference).await,
        "corrupt tagged manifest",
    ) {
        RegistryError::DigestMismatch { expected, .. } => assert_eq!(expected, manifest_digest),
        other => panic!("corrupt tagged manifest: expected DigestMismatch, got {other:?}"),
    }
    ensure!(
        statuses(&bed.proxy, "/manifests/")
            .iter()
            .all(|&s| s == 200),
        "{:?}",
        bed.proxy.request_log()
    );
    bed.proxy.clear_faults();
    let clean = bed.client.resolve(&pinned).await?;
    assert_matches_image(&clean, bed.image());
    Ok(())
}

#[tokio::test]
async fn truncated_bodies_fail_or_resume() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let bed = FaultBed::start()?;
    let resolved = bed.client.resolve(&bed.reference).await?;
    let big = layer(&resolved, 0);
    let blob = bed.blob(0)?;
    let blob_path = format!("/blobs/{}", big.digest());
    const KEEP: usize = 256 * 1024;

    // Every response (the first and any resumed one) is cut short: the stream ends in an error,
    // and what it delivered is a true prefix of the blob.
    bed.proxy.inject(&blob_path, Fault::Truncate { keep: KEEP });
    let (bytes, error) = drain(bed.client.fetch_blob(&bed.reference, &big).await?).await;
    ensure!(
        !bytes.is_empty() && bytes.len() < blob.len(),
        "{} bytes delivered",
        bytes.len()
    );
    assert!(
        bytes == blob[..bytes.len()],
        "delivered bytes are not a prefix"
    );
    match error {
        Some(RegistryError::Truncated {
            digest,
            expected,
            received,
            ..
        }) => {
            assert_eq!(digest, big.digest().to_string());
            assert_eq!(expected, big.size());
            assert_eq!(received, bytes.len() as u64);
        }
        other => panic!("truncated blob: expected Truncated, got {other:?}"),
    }
    let attempts = bed.proxy.requests_matching(&blob_path);
    ensure!(
        attempts >= 1 && bytes.len() <= attempts * KEEP,
        "{attempts} requests delivered {} bytes",
        bytes.len()
    );

    // A range read that is always cut short fails as truncated too.
    bed.proxy.reset_counts();
    let range = 100..100 + 4 * KEEP as u64;
    match expect_err(
        bed.client
            .read_range(&bed.reference, &digest_of(big.digest()), range.clone())
            .await,
        "truncated range",
    ) {
        RegistryError::Truncated {
            expected, received, ..
        } => {
            assert_eq!(expected, range.end - range.start);
            ensure!(received < expected, "received {received}");
        }
        other => panic!("truncated range: expected Truncated, got {other:?}"),
    }

    // Cut short once: the whole-blob stream resumes and delivers the verified blob.
    bed.proxy.clear_faults();
    bed.proxy.reset_counts();
    bed.proxy
        .inject_times(&blob_path, Fault::Truncate { keep: KEEP }, 1);
    assert!(
        fetch_whole(&bed.client, &bed.reference, &big).await? == blob,
        "resumed blob differs"
    );
    ensure!(
        bed.proxy.requests_matching(&blob_path) >= 2,
        "{:?}",
        bed.proxy.request_log()
    );
    // Cut short once: the range read is retried.
    bed.proxy
        .inject_times(&blob_path, Fault::Truncate { keep: KEEP }, 1);
    let bytes = bed
        .client
        .read_range(&bed.reference, &digest_of(big.digest()), range.clone())
        .await?;
    assert!(bytes.as_ref() == &blob[range.start as usize..range.end as usize]);
    // A truncated manifest is retried too.
    bed.proxy
        .inject_times("/manifests/", Fault::Truncate { keep: 10 }, 1);
    let again = bed.client.resolve(&bed.reference).await?;
    assert_matches_image(&again, bed.image());
    Ok(())
}

#[tokio::test]
async fn replaced_manifests_are_invalid_unsupported_or_too_large() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let bed = FaultBed::start()?;

    // The tagged manifest replaced by malformed JSON (the proxy's Docker-Content-Digest names the
    // new body, as if the registry served it).
    let malformed = b"{\"schemaVersion\": 2, \"mediaType\": ".to_vec();
    bed.proxy.inject(
        "/manifests/",
        Fault::ReplaceBody {
            content_type: None,
            body: malformed.clone(),
        },
    );
    match expect_err(
        bed.client.resolve(&bed.reference).await,
        "malformed tagged manifest",
    ) {
        RegistryError::InvalidManifest { digest, reason } => {
            assert_eq!(digest, sha256_digest(&malformed));
            assert!(!reason.is_empty());
        }
        other => panic!("malformed tagged manifest: expected InvalidManifest, got {other:?}"),
    }
    bed.proxy.clear_faults();

    // The tagged manifest replaced by a well-formed document of an unknown media type.
    let unknown_type = "application/vnd.example.unknown.v1+json";
    let unknown = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": unknown_type,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": bed.image().config_digest,
            "size": bed.image().config.len(),
        },
        "layers": [],
    }))?;
    bed.proxy.inject(
        "/manifests/",
        Fault::ReplaceBody {
            content_type: Some(unknown_type.to_string()),
            body: unknown.clone(),
        },
    );
    match expect_err(
        bed.client.resolve(&bed.reference).await,
        "unknown media type",
    ) {
        RegistryError::UnsupportedMediaType { media_type } => {
            assert!(media_type.contains(unknown_type), "{media_type}")
        }
        other => panic!("unknown media type: expected UnsupportedMediaType, got {other:?}"),
    }
    bed.proxy.clear_faults();

    // A 5 MiB manifest is refused for its size, before anything else.
    bed.proxy.inject(
        "/manifests/",
        Fault::ReplaceBody {
            content_type: Some(MEDIA_TYPE_OCI_MANIFEST.to_string()),
            body: vec![b' '; 5 << 20],
        },
    );
    match expect_err(bed.client.resolve(&bed.reference).await, "5 MiB manifest") {
        RegistryError::ManifestTooLarge { limit } => assert_eq!(limit, 4 << 20),
        other => panic!("5 MiB manifest: expected ManifestTooLarge, got {other:?}"),
    }
    bed.proxy.clear_faults();

    // Manifests pinned by the digest of a bad body: the registry does not have them, so a second
    // proxy between answers manifest requests with an empty 200 without headers, and the outer
    // proxy replaces that body. The bytes verify against the pinned digest, then fail to parse.
    let headerless = FaultProxy::in_front_of(&bed.registry)?;
    headerless.inject("/manifests/", Fault::Status(200));
    let replacer = FaultProxy::start(&headerless.url())?;
    let via_replacer =
        |manifest_ref: &str| parse(&format!("{}/faulty/app{manifest_ref}", replacer.host()));

    replacer.inject(
        "/manifests/",
        Fault::ReplaceBody {
            content_type: Some(MEDIA_TYPE_OCI_MANIFEST.to_string()),
            body: malformed.clone(),
        },
    );
    {
        let reference = via_replacer(&format!("@{}", sha256_digest(&malformed)))?;
        match expect_err(bed.client.resolve(&reference).await, "malformed manifest") {
            RegistryError::InvalidManifest { digest, reason } => {
                assert_eq!(digest, sha256_digest(&malformed), "{reference}");
                assert!(!reason.is_empty());
            }
            other => {
                panic!("malformed manifest {reference}: expected InvalidManifest, got {other:?}")
            }
        }
    }
    // JSON that is neither an index nor a manifest.
    replacer.clear_faults();
    let shapeless = br#"{"schemaVersion": 2, "annotations": {"a": "b"}}"#.to_vec();
    replacer.inject(
        "/manifests/",
        Fault::ReplaceBody {
            content_type: Some("application/json".to_string()),
            body: shapeless.clone(),
        },
    );
    match expect_err(
        bed.client.resolve(&via_replacer(":v1")?).await,
        "shapeless manifest",
    ) {
        RegistryError::InvalidManifest { digest, .. } => {
            assert_eq!(digest, sha256_digest(&shapeless))
        }
        other => panic!("shapeless manifest: expected InvalidManifest, got {other:?}"),
    }

    // A well-formed document of an unknown media type.
    replacer.clear_faults();
    replacer.inject(
        "/manifests/",
        Fault::ReplaceBody {
            content_type: Some(unknown_type.to_string()),
            body: unknown.clone(),
        },
    );
    {
        let reference = via_replacer(&format!("@{}", sha256_digest(&unknown)))?;
        match expect_err(bed.client.resolve(&reference).await, "unknown media type") {
            RegistryError::UnsupportedMediaType { media_type } => {
                assert!(media_type.contains(unknown_type), "{media_type}")
            }
            other => panic!(
                "unknown media type {reference}: expected UnsupportedMediaType, got {other:?}"
            ),
        }
    }
    // Docker schema1 is refused by name.
    replacer.clear_faults();
    replacer.inject(
        "/manifests/",
        Fault::ReplaceBody {
            content_type: Some(
                "application/vnd.docker.distribution.manifest.v1+prettyjws".to_string(),
            ),
            body: br#"{"schemaVersion": 1, "name": "faulty/app", "tag": "v1", "fsLayers": []}"#
                .to_vec(),
        },
    );
    match expect_err(bed.client.resolve(&via_replacer(":v1")?).await, "schema1") {
        RegistryError::UnsupportedMediaType { media_type } => {
            assert!(media_type.contains("schema1"), "{media_type}")
        }
        other => panic!("schema1: expected UnsupportedMediaType, got {other:?}"),
    }
    ensure!(
        headerless.requests_matching("/manifests/") >= 1,
        "{:?}",
        headerless.request_log()
    );

    // Without faults everything resolves again through both proxies.
    replacer.clear_faults();
    headerless.clear_faults();
    let resolved = bed.client.resolve(&via_replacer(":v1")?).await?;
    assert_matches_image(&resolved, bed.image());
    Ok(())
}

#[tokio::test]
async fn error_statuses_map_to_errors_and_5xx_is_retried() -> Result<()> {
    require(&["docker-registry", "skopeo"])?;
    let bed = FaultBed::start()?;
    let resolved = bed.client.resolve(&bed.reference).await?;
    let big = layer(&resolved, 0);
    let blob_path = format!("/blobs/{}", big.digest());

    bed.proxy.inject("/manifests/", Fault::Status(404));
    match expect_err(bed.client.resolve(&bed.reference).await, "404 manifest") {
        RegistryError::NotFound { url } => {
            assert!(url.contains("/v2/faulty/app/manifests/v1"), "{url}");
            assert!(url.contains(&bed.proxy.host()), "{url}");
        }
        other => panic!("404 manifest: expected NotFound, got {other:?}"),
    }
    bed.proxy.clear_faults();
    bed.proxy.inject(&blob_path, Fault::Status(404));
    match expect_err(
        bed.client
            .fetch_blob(&bed.reference, &big)
            .await
            .map(|_| ()),
        "404 blob",
    ) {
        RegistryError::NotFound { url } => assert!(url.contains(&blob_path), "{url}"),
        other => panic!("404 blob: expected NotFound, got {other:?}"),
    }
    match expect_err(
        bed.client
            .read_range(&bed.reference, &digest_of(big.digest()), 0..100)
            .await,
        "404 range",
    ) {
        RegistryError::NotFound { url } => assert!(url.contains(&blob_path), "{url}"),
        other => panic!("404 range: expected NotFound, got {other:?}"),
    }
    bed.proxy.clear_faults();

    bed.proxy.inject("/manifests/", Fault::Status(403));
    match expect_err(bed.client.resolve(&bed.reference).await, "403 manifest") {
        RegistryError::Forbidden { url } => {
            assert!(url.contains("/v2/faulty/app/manifests/v1"), "{url}")
        }
        other => panic!("403 manifest: expected Forbidden, got {other:?}"),
    }
    bed.proxy.clear_faults();
    bed.proxy.inject(&blob_path, Fault::Status(403));
    match expect_err(
        bed.client
            .read_range(&bed.reference, &digest_of(big.digest()), 0..100)
            .await,
        "403 range",
    ) {
        RegistryError::Forbidden { url } => assert!(url.contains(&blob_path), "{url}"),
        other => panic!("403 range: expected Forbidden, got {other:?}"),
    }
    bed.proxy.clear_faults();

    // 503 twice, then the registry answers: retried to success.
    bed.proxy.reset_counts();
    bed.proxy.inject_times("/manifests/", Fault::Status(503), 2);
    let retried = bed.client.resolve(&bed.reference).await?;
    assert_matches_image(&retried, bed.image());
    assert_eq!(statuses(&bed.proxy, "/manifests/"), [503, 503, 200]);
    bed.proxy.reset_counts();
    bed.proxy.inject_times(&blob_path, Fault::Status(503), 2);
    let blob = bed.blob(0)?;
    let bytes = bed
        .client
        .read_range(&bed.reference, &digest_of(big.digest()), 10..20_010)
        .await?;
    assert!(bytes.as_ref() == &blob[10..20_010]);
    assert_eq!(statuses(&bed.proxy, &blob_path), [503, 503, 206]);
    bed.proxy.reset_counts();
    bed.proxy.inject_times(&blob_path, Fault::Status(502), 1);
    assert!(fetch_whole(&bed.client, &bed.reference, &big).await? == blob);
    assert_eq!(statuses(&bed.proxy, &blob_path), [502, 200]);
    // A dropped connection is retried as well.
    bed.proxy.reset_counts();
    bed.proxy.inject_times("/manifests/", Fault::Drop, 1);
    assert_matches_image(&bed.client.resolve(&bed.reference).await?, bed.image());
    assert_eq!(statuses(&bed.proxy, "/manifests/"), [0, 200]);

    // A 503 that never ends gives up after max_retries retries.
    let dir = tempfile::tempdir()?;
    let impatient = RegistryClient::new(RegistryConfig {
        max_retries: 1,
        ..isolated_config(dir.path())?
    })?;
    bed.proxy.reset_counts();
    bed.proxy.inject("/manifests/", Fault::Status(503));
    match expect_err(impatient.resolve(&bed.reference).await, "endless 503") {
        RegistryError::Status { url, status } => {
            assert_eq!(status, 503);
            assert!(url.contains("/manifests/v1"), "{url}");
        }
        other => panic!("endless 503: expected Status, got {other:?}"),
    }
    assert_eq!(statuses(&bed.proxy, "/manifests/"), [503, 503]);
    Ok(())
}

#[tokio::test]
async fn invalid_references_are_refused_naming_the_input() -> Result<()> {
    require(&[])?;
    for input in [
        "UPPER/case",
        "host:port/repo:tag@sha256:short",
        "",
        "127.0.0.1:5000/app@sha256:0123",
        "127.0.0.1:5000/app:bad tag",
        "127.0.0.1:5000/app:-tag",
    ] {
        match input.parse::<Reference>() {
            Ok(parsed) => panic!("{input:?} parsed as {parsed}"),
            Err(RegistryError::InvalidReference { reference, reason }) => {
                assert_eq!(reference, input);
                assert!(!reason.is_empty(), "{input:?}: empty reason");
                let message = RegistryError::InvalidReference {
                    reference: reference.clone(),
                    reason: reason.clone(),
                }
                .to_string();
                assert!(
                    message.contains(&format!("{input:?}")),
                    "message {message:?} does not name {input:?}"
                );
            }
            Err(other) => panic!("{input:?}: expected InvalidReference, got {other:?}"),
        }
    }
    // The message of the error itself names the input too.
    let error = "UPPER/case".parse::<Reference>().unwrap_err().to_string();
    assert!(error.contains("UPPER/case"), "{error}");

    // The forms the tests above rely on do parse.
    let digest = sha256_digest(b"x");
    let parsed = parse(&format!("127.0.0.1:5000/a/b:v1@{digest}"))?;
    assert_eq!(parsed.registry(), "127.0.0.1:5000");
    assert_eq!(parsed.repository(), "a/b");
    assert_eq!(parsed.tag(), Some("v1"));
    assert_eq!(parsed.digest().map(ToString::to_string), Some(digest));
    assert_eq!(
        parsed.to_string(),
        format!("127.0.0.1:5000/a/b:v1@{}", sha256_digest(b"x"))
    );
    Ok(())
}
