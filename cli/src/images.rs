//! `skiff image pull|rpull|ls|rm|info`.

use std::collections::HashMap;

use anyhow::{bail, Context};
use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use skiff_api::v1::{self, images_client::ImagesClient, pull_progress::Event};
use tokio_stream::StreamExt;

use crate::output;
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Fetch an image from its registry into the content store.
    Pull {
        /// Image reference: HOST[:PORT]/REPO[:TAG][@sha256:DIGEST]; `busybox` means docker.io/library/busybox:latest.
        reference: String,
        /// Speak plain HTTP to the registry (for a local registry without TLS).
        #[arg(long)]
        plain_http: bool,
        /// Registry credentials (otherwise skiffd's docker config.json is used).
        #[command(flatten)]
        auth: crate::credentials::UserArgs,
    },
    /// Pull an image through a containerd into one of its snapshotters (skiffd as its remote snapshotter):
    /// layers skiffd can serve lazily are not downloaded, the others are unpacked by containerd.
    Rpull(crate::rpull::RpullArgs),
    /// List images.
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images; blobs no other image uses are deleted.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show an image's target, platform manifest, config and layers, with what each lazily mounted
    /// layer has fetched, cached and served.
    Info {
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(ctx: &Ctx, command: ImageCommand) -> anyhow::Result<()> {
    let mut client = ImagesClient::new(ctx.channel.clone());
    let namespace = ctx.namespace.clone();
    match command {
        ImageCommand::Pull {
            reference,
            plain_http,
            auth,
        } => {
            pull(
                &mut client,
                namespace,
                reference,
                plain_http,
                auth.credentials()?,
            )
            .await
        }
        ImageCommand::Rpull(args) => crate::rpull::run(&namespace, args).await,
        ImageCommand::Ls { quiet } => {
            let images = client
                .list(v1::ListImagesRequest { namespace })
                .await
                .map_err(output::status)
                .context("list images")?
                .into_inner()
                .images;
            if quiet {
                images.iter().for_each(|i| println!("{}", i.name));
                return Ok(());
            }
            let mut rows = Vec::with_capacity(images.len());
            for image in &images {
                let target = image.target.clone().unwrap_or_default();
                // One Get per image: what its lazily mounted layers have fetched.
                let fetched = client
                    .get(v1::GetImageRequest {
                        namespace: ctx.namespace.clone(),
                        name: image.name.clone(),
                    })
                    .await
                    .map(|detail| fetched_summary(&detail.into_inner().fetch))
                    .unwrap_or_else(|_| "-".to_owned());
                rows.push(vec![
                    image.name.clone(),
                    target.media_type,
                    target.digest,
                    output::size(target.size),
                    fetched,
                    output::age(image.created_at.as_ref()),
                ]);
            }
            output::table(&["REF", "TYPE", "DIGEST", "SIZE", "FETCHED", "AGE"], rows)
        }
        ImageCommand::Rm { names } => {
            for name in names {
                client
                    .delete(v1::DeleteImageRequest {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    })
                    .await
                    .map_err(output::status)
                    .with_context(|| format!("remove image {name}"))?;
                println!("{name}");
            }
            Ok(())
        }
        ImageCommand::Info { name, json } => {
            let detail = client
                .get(v1::GetImageRequest {
                    namespace,
                    name: name.clone(),
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("image info {name}"))?
                .into_inner();
            if json {
                println!("{}", detail_json(&detail)?);
            } else {
                print_detail(&detail);
            }
            Ok(())
        }
    }
}

pub(crate) async fn pull(
    client: &mut ImagesClient<tonic::transport::Channel>,
    namespace: String,
    reference: String,
    plain_http: bool,
    credentials: Option<(String, String)>,
) -> anyhow::Result<()> {
    let credentials =
        credentials.map(|(username, password)| v1::Credentials { username, password });
    let mut stream = client
        .pull(v1::PullRequest {
            namespace,
            reference: reference.clone(),
            plain_http,
            credentials,
        })
        .await
        .map_err(output::status)
        .with_context(|| format!("pull {reference}"))?
        .into_inner();

    let bars = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:.bold} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}")
            .context("progress bar template")?;
    let mut blobs: HashMap<String, ProgressBar> = HashMap::new();
    while let Some(message) = stream.next().await {
        let message = message
            .map_err(output::status)
            .with_context(|| format!("pull {reference}"))?;
        match message.event {
            Some(Event::Resolved(resolved)) => {
                let target = resolved.target.unwrap_or_default();
                say(
                    &bars,
                    format!("{}: resolved {}", resolved.name, target.digest),
                );
                for blob in resolved.blobs {
                    let bar = bars.add(ProgressBar::new(blob.size).with_style(style.clone()));
                    bar.set_prefix(short_digest(&blob.digest));
                    bar.set_message(kind(&blob.media_type));
                    blobs.insert(blob.digest, bar);
                }
            }
            Some(Event::Blob(progress)) => {
                if let Some(snapshot) = progress
                    .snapshot
                    .as_ref()
                    .filter(|s| !s.fallback.is_empty())
                {
                    say(
                        &bars,
                        format!(
                            "{}: not served lazily ({}); downloaded and unpacked",
                            short_digest(&progress.digest),
                            snapshot.fallback
                        ),
                    );
                }
                if let Some(bar) = blobs.get(&progress.digest) {
                    bar.set_position(progress.offset);
                    if progress.done {
                        let lazy = progress
                            .snapshot
                            .as_ref()
                            .is_some_and(|s| s.source() == v1::layer_snapshot::Source::Lazy);
                        let state = match (lazy, progress.cached) {
                            (true, _) => "lazy",
                            (false, true) => "exists",
                            (false, false) => "done",
                        };
                        bar.finish_with_message(state);
                    }
                }
            }
            Some(Event::Done(image)) => {
                let digest = image.target.map(|t| t.digest).unwrap_or_default();
                let _ = bars.clear();
                println!("{}: pulled {}", image.name, digest);
                return Ok(());
            }
            None => {}
        }
    }
    bail!("pull {reference}: skiffd closed the stream before the pull finished")
}

/// A line above the progress bars; on stderr when they are hidden (not a terminal), where indicatif
/// would drop it.
fn say(bars: &MultiProgress, line: String) {
    if bars.is_hidden() {
        eprintln!("{line}");
    } else {
        let _ = bars.println(line);
    }
}

fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.chars().take(12).collect()
}

fn kind(media_type: &str) -> String {
    let kind = if media_type.contains("index") || media_type.contains("manifest.list") {
        "index"
    } else if media_type.contains("manifest") {
        "manifest"
    } else if media_type.contains("config") {
        "config"
    } else {
        "layer"
    };
    kind.to_string()
}

fn print_detail(detail: &v1::ImageDetail) {
    let image = detail.image.clone().unwrap_or_default();
    let describe = |d: &Option<v1::Descriptor>| {
        d.as_ref().map_or_else(
            || "-".to_string(),
            |d| format!("{} {} ({})", d.digest, d.media_type, output::size(d.size)),
        )
    };
    println!("Name:      {}", image.name);
    println!("Target:    {}", describe(&image.target));
    println!("Platform:  {}", detail.platform);
    println!("Manifest:  {}", describe(&detail.manifest));
    println!("Config:    {}", describe(&detail.config));
    println!("Labels:    {}", output::labels(&image.labels));
    println!("Fetched:   {}", fetched_summary(&detail.fetch));
    println!("Layers:");
    for (i, layer) in detail.layers.iter().enumerate() {
        println!("  {}", describe(&Some(layer.clone())));
        if let Some(fetch) = detail.fetch.get(i).filter(|f| f.lazy) {
            if fetch.unmounted {
                println!("    lazy: NOT MOUNTED (skiffd could not mount it again; see its log)");
                continue;
            }
            println!(
                "    lazy: {} of {} fetched in {} requests",
                output::size(fetch.bytes_fetched),
                output::size(fetch.size),
                fetch.requests
            );
            println!(
                "    chunks: {} of {} cached; read by containers {}; background {}; duplicate fetches {}",
                fetch.chunks_cached,
                fetch.chunks_total,
                output::size(fetch.bytes_read),
                output::size(fetch.background_bytes),
                fetch.duplicate_fetches
            );
        }
        let mut annotations: Vec<_> = layer.annotations.iter().collect();
        annotations.sort();
        for (key, value) in annotations {
            println!("    {key}={value}");
        }
    }
}

/// `image info --json`: the detail with every layer's fetch counters (`fetch` is null for a layer that
/// was downloaded whole).
fn detail_json(detail: &v1::ImageDetail) -> anyhow::Result<String> {
    use serde_json::{json, Value};
    let descriptor = |d: Option<&v1::Descriptor>| {
        d.map_or(
            Value::Null,
            |d| json!({"digest": d.digest, "media_type": d.media_type, "size": d.size}),
        )
    };
    let image = detail.image.clone().unwrap_or_default();
    let layers: Vec<Value> = detail
        .layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let mut value = descriptor(Some(layer));
            value["annotations"] = json!(layer.annotations);
            value["fetch"] = detail
                .fetch
                .get(i)
                .filter(|f| f.lazy)
                .map_or(Value::Null, |f| {
                    json!({
                        "bytes_fetched": f.bytes_fetched,
                        "requests": f.requests,
                        "background_bytes": f.background_bytes,
                        "bytes_read": f.bytes_read,
                        "chunks_total": f.chunks_total,
                        "chunks_cached": f.chunks_cached,
                        "duplicate_fetches": f.duplicate_fetches,
                        "mounted": !f.unmounted,
                    })
                });
            value
        })
        .collect();
    let value = json!({
        "name": image.name,
        "target": descriptor(image.target.as_ref()),
        "platform": detail.platform,
        "manifest": descriptor(detail.manifest.as_ref()),
        "config": descriptor(detail.config.as_ref()),
        "snapshot": detail.snapshot,
        "labels": image.labels,
        "layers": layers,
    });
    serde_json::to_string_pretty(&value).context("format image info as JSON")
}

/// `lazy 3% (1.1 MB of 34.6 MB, 120 of 4000 chunks cached)` when any layer is mounted lazily (chunks of
/// the lazy layers), `full` when every layer was downloaded, `-` when the image has no layer snapshots.
fn fetched_summary(fetch: &[v1::LayerFetch]) -> String {
    if fetch.is_empty() {
        return "-".to_owned();
    }
    let total: u64 = fetch.iter().map(|f| f.size).sum();
    if !fetch.iter().any(|f| f.lazy) {
        return "full".to_owned();
    }
    // Layers downloaded whole count in full.
    let fetched: u64 = fetch
        .iter()
        .map(|f| {
            if f.lazy {
                f.bytes_fetched.min(f.size)
            } else {
                f.size
            }
        })
        .sum();
    let percent = if total == 0 {
        100.0
    } else {
        fetched as f64 * 100.0 / total as f64
    };
    let lazy = fetch.iter().filter(|f| f.lazy);
    let (cached, chunks) = lazy.fold((0, 0), |(cached, chunks), f| {
        (cached + f.chunks_cached, chunks + f.chunks_total)
    });
    let unmounted = fetch.iter().filter(|f| f.unmounted).count();
    let warning = if unmounted > 0 {
        format!(", {unmounted} NOT MOUNTED")
    } else {
        String::new()
    };
    format!(
        "lazy {percent:.0}% ({} of {}, {cached} of {chunks} chunks cached{warning})",
        output::size(fetched),
        output::size(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetched_summary_counts_downloaded_layers_in_full() {
        let layer = |lazy, bytes_fetched, size| v1::LayerFetch {
            digest: String::new(),
            lazy,
            bytes_fetched,
            requests: 1,
            size,
            ..v1::LayerFetch::default()
        };
        assert_eq!(fetched_summary(&[]), "-");
        assert_eq!(fetched_summary(&[layer(false, 0, 100)]), "full");
        let mixed = fetched_summary(&[layer(false, 0, 1000), layer(true, 0, 9000)]);
        assert!(mixed.starts_with("lazy 10% ("), "{mixed}");
        let chunks = |cached, total| v1::LayerFetch {
            chunks_cached: cached,
            chunks_total: total,
            ..layer(true, 0, 100)
        };
        let counted = fetched_summary(&[chunks(3, 10), chunks(5, 30)]);
        assert!(counted.ends_with(", 8 of 40 chunks cached)"), "{counted}");
        // A lazy layer skiffd could not mount again is still lazy, never "full", and says so.
        let unmounted = v1::LayerFetch {
            unmounted: true,
            ..layer(true, 0, 100)
        };
        let summary = fetched_summary(&[unmounted]);
        assert!(
            summary.starts_with("lazy 0% (") && summary.ends_with(", 1 NOT MOUNTED)"),
            "{summary}"
        );
    }

    #[test]
    fn info_json_carries_every_lazy_layer_counter() {
        let layer = |digest: &str| v1::Descriptor {
            digest: digest.to_owned(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
            size: 100,
            ..v1::Descriptor::default()
        };
        let detail = v1::ImageDetail {
            layers: vec![layer("sha256:a"), layer("sha256:b")],
            fetch: vec![
                v1::LayerFetch {
                    digest: "sha256:a".to_owned(),
                    size: 100,
                    ..v1::LayerFetch::default()
                },
                v1::LayerFetch {
                    digest: "sha256:b".to_owned(),
                    lazy: true,
                    bytes_fetched: 40,
                    requests: 2,
                    size: 100,
                    chunks_total: 9,
                    chunks_cached: 4,
                    background_bytes: 10,
                    bytes_read: 77,
                    duplicate_fetches: 0,
                    unmounted: false,
                },
            ],
            ..v1::ImageDetail::default()
        };
        let value: serde_json::Value =
            serde_json::from_str(&detail_json(&detail).unwrap()).unwrap();
        let layers = value["layers"].as_array().unwrap();
        assert!(layers[0]["fetch"].is_null());
        let fetch = &layers[1]["fetch"];
        assert_eq!(fetch["chunks_total"], 9);
        assert_eq!(fetch["chunks_cached"], 4);
        assert_eq!(fetch["bytes_read"], 77);
        assert_eq!(fetch["background_bytes"], 10);
        assert_eq!(fetch["duplicate_fetches"], 0);
        assert_eq!(layers[1]["digest"], "sha256:b");
    }
}
