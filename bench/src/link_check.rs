//! `skiff-bench link-check`: measures a [`ShapedLink`] in front of a real docker-registry, so every run
//! can say what network it actually had: one whole-blob GET gives the rate, a series of small Range GETs
//! on one kept-alive connection gives the round-trip time. Both are printed beside what the profile
//! predicts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use sha2::{Digest, Sha256};
use skiff_tests::{generated_bytes, Registry, RegistryAuth};
use tokio::runtime::Handle;

use crate::link::{Profile, ShapedLink};

#[derive(Debug, Args)]
pub struct LinkCheckArgs {
    /// Network profile to check: lan, wan, slow or none.
    #[arg(long, default_value = "wan")]
    pub profile: Profile,
    /// Size of the blob fetched whole, in MiB.
    #[arg(long, default_value_t = 100)]
    pub blob_mib: usize,
    /// Number of small Range GETs.
    #[arg(long, default_value_t = 100)]
    pub ranges: usize,
}

/// What a link check measured.
#[derive(Clone, Copy, Debug)]
pub struct LinkMeasurement {
    pub profile: Profile,
    pub blob_bytes: u64,
    pub blob_time: Duration,
    /// Bytes per second of the whole-blob GET, its request round trip taken out.
    pub rate: f64,
    pub ranges: usize,
    pub range_median: Duration,
    pub range_max: Duration,
    /// Median of the same Range GETs straight to the registry: its own time per request, which the link
    /// adds its round trip to.
    pub direct_range_median: Duration,
}

impl LinkMeasurement {
    /// Two lines for the start of a benchmark's output.
    pub fn report(&self) -> String {
        let predicted_blob = self.profile.predicted_transfer(self.blob_bytes);
        let rate = match self.profile.rate {
            Some(rate) => format!("{} Mbit/s", rate * 8 / 1_000_000),
            None => "unlimited".to_owned(),
        };
        format!(
            "link {}:\n  {} MiB blob GET  {:>8.3} s (predicted {:.3} s)  rate {:.1} Mbit/s (profile {rate})\n  \
             {} Range GETs  median {:.1} ms, max {:.1} ms = RTT {:.1} ms + registry {:.1} ms (profile RTT {} ms)",
            self.profile,
            self.blob_bytes >> 20,
            self.blob_time.as_secs_f64(),
            predicted_blob.as_secs_f64(),
            self.rate * 8.0 / 1e6,
            self.ranges,
            self.range_median.as_secs_f64() * 1e3,
            self.range_max.as_secs_f64() * 1e3,
            self.range_median
                .saturating_sub(self.direct_range_median)
                .as_secs_f64()
                * 1e3,
            self.direct_range_median.as_secs_f64() * 1e3,
            self.profile.rtt.as_millis(),
        )
    }
}

pub fn run(args: &LinkCheckArgs, runtime: &Handle) -> Result<()> {
    let measurement = check_profile(args.profile, args.blob_mib, args.ranges, runtime)?;
    println!("{}", measurement.report());
    Ok(())
}

/// Measures `profile` with a throwaway docker-registry holding one `blob_mib` MiB blob.
pub fn check_profile(
    profile: Profile,
    blob_mib: usize,
    ranges: usize,
    runtime: &Handle,
) -> Result<LinkMeasurement> {
    skiff_tests::require(&["docker-registry"])?;
    let registry = Registry::start(RegistryAuth::Anonymous)?;
    let blob = generated_bytes(11, blob_mib << 20);
    let digest = upload_blob(runtime, &registry.url(), "link-check", &blob)?;
    let upstream: SocketAddr = registry.host().parse().context("registry address")?;
    runtime.block_on(async {
        let link = ShapedLink::start(upstream, profile).await?;
        measure(&link, upstream, "link-check", &digest, ranges).await
    })
}

/// Pushes `blob` to `repository` with a monolithic upload (POST, then PUT with the digest); returns the
/// digest.
pub fn upload_blob(
    runtime: &Handle,
    registry_url: &str,
    repository: &str,
    blob: &[u8],
) -> Result<String> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(blob)));
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let started = client
            .post(format!("{registry_url}/v2/{repository}/blobs/uploads/"))
            .send()
            .await
            .context("start a blob upload")?;
        ensure!(
            started.status() == reqwest::StatusCode::ACCEPTED,
            "blob upload start: {}",
            started.status()
        );
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("blob upload without a Location")?;
        let location = if location.starts_with('/') {
            format!("{registry_url}{location}")
        } else {
            location.to_owned()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let finished = client
            .put(format!("{location}{separator}digest={digest}"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(blob.to_vec())
            .send()
            .await
            .context("upload the blob")?;
        ensure!(
            finished.status() == reqwest::StatusCode::CREATED,
            "blob upload: {}",
            finished.status()
        );
        Ok(digest.clone())
    })
}

/// One whole GET of the blob on a fresh connection, then `ranges` 1 KiB Range GETs at spread offsets on
/// one kept-alive connection, through the link and straight to `registry`; every byte is checked against
/// the whole blob, and the whole blob against its digest.
pub async fn measure(
    link: &ShapedLink,
    registry: SocketAddr,
    repository: &str,
    digest: &str,
    ranges: usize,
) -> Result<LinkMeasurement> {
    let url = format!("http://{}/v2/{repository}/blobs/{digest}", link.addr());
    let profile = link.profile();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let start = Instant::now();
    let body = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("GET the blob through the link")?
        .bytes()
        .await
        .context("read the blob through the link")?;
    let blob_time = start.elapsed();
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    ensure!(
        got == digest,
        "the link delivered a blob with digest {got}, not {digest}"
    );
    // The connection's handshake and the request's round trip are not transfer time.
    let transfer = blob_time.saturating_sub(profile.rtt * 2).as_secs_f64();
    let rate = if transfer > 0.0 {
        body.len() as f64 / transfer
    } else {
        f64::INFINITY
    };

    let (range_median, range_max) = range_gets(&client, &url, &body, ranges).await?;
    let direct_url = format!("http://{registry}/v2/{repository}/blobs/{digest}");
    let direct = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let (direct_range_median, _) = range_gets(&direct, &direct_url, &body, ranges).await?;
    Ok(LinkMeasurement {
        profile,
        blob_bytes: body.len() as u64,
        blob_time,
        rate,
        ranges,
        range_median,
        range_max,
        direct_range_median,
    })
}

/// `ranges` sequential 1 KiB Range GETs of `url` (whose whole content is `body`); their median and max.
async fn range_gets(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    ranges: usize,
) -> Result<(Duration, Duration)> {
    let blob_len = body.len() as u64;
    let mut times = Vec::with_capacity(ranges);
    for i in 0..ranges as u64 {
        let offset = (i * 7919 * 4096) % blob_len.saturating_sub(1024).max(1);
        let start = Instant::now();
        let response = client
            .get(url)
            .header(
                reqwest::header::RANGE,
                format!("bytes={offset}-{}", offset + 1023),
            )
            .send()
            .await
            .context("Range GET through the link")?;
        if response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            bail!("Range GET answered {}", response.status());
        }
        let part = response.bytes().await?;
        times.push(start.elapsed());
        ensure!(
            part.len() == 1024,
            "Range GET returned {} bytes",
            part.len()
        );
        ensure!(
            part[..] == body[offset as usize..offset as usize + 1024],
            "Range GET at {offset} returned other bytes"
        );
    }
    times.sort();
    Ok((
        times.get(times.len() / 2).copied().unwrap_or_default(),
        times.last().copied().unwrap_or_default(),
    ))
}
