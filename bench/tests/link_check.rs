//! The link check against a real docker-registry through an unshaped link: the blob crosses intact (its
//! digest is checked), Range GETs return the right bytes, and the link counts what the registry sent.

use std::net::SocketAddr;

use skiff_bench::link::{Profile, ShapedLink};
use skiff_bench::link_check::{measure, upload_blob};
use skiff_tests::{generated_bytes, require, Registry, RegistryAuth};

#[test]
fn a_registry_blob_crosses_the_link_intact_and_counted() -> anyhow::Result<()> {
    require(&["docker-registry"])?;
    let runtime = tokio::runtime::Runtime::new()?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let blob = generated_bytes(3, 3 << 20);
    let digest = upload_blob(runtime.handle(), &registry.url(), "check", &blob)?;
    let upstream: SocketAddr = registry.host().parse()?;
    runtime.block_on(async {
        let link = ShapedLink::start(upstream, Profile::NONE).await?;
        let measured = measure(&link, upstream, "check", &digest, 10).await?;
        assert_eq!(measured.blob_bytes, blob.len() as u64);
        assert_eq!(measured.ranges, 10);
        let stats = link.stats();
        // The blob, ten 1 KiB parts, and the HTTP headers of eleven responses.
        assert!(stats.downstream_bytes >= blob.len() as u64 + 10 * 1024);
        assert!(stats.downstream_bytes < blob.len() as u64 + 10 * 1024 + 11 * 4096);
        assert!(stats.upstream_bytes > 0);
        anyhow::Ok(())
    })
}
