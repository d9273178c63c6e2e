//! `skiff snapshot ls|prepare|view|commit|rm|tree|usage|mounts|info|label`, like `ctr snapshots`, over
//! containerd's snapshots.v1 API on skiffd's socket.
//!
//! snapshots.v1 has one global key space; the keys a user types are relative to the namespace (`-n`) and
//! stored as `skiff.ns/NAMESPACE/KEY` ([`SnapshotKey::namespaced`]). Image layer snapshots
//! (`skiff.image/<chain id>`) belong to no namespace: they are typed and shown as they are, in every
//! namespace, and are the usual parents. Snapshots of other namespaces and containerd's own are never shown.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use skiff_api::containerd::snapshots::v1::{self as api, snapshots_client::SnapshotsClient};
use skiff_api::containerd::types::Mount;
use skiff_types::snapshot_key::{visible_key, IMAGE_PREFIX, NAMESPACE_PREFIX};
use skiff_types::SnapshotKey;
use tonic::transport::Channel;

use crate::output;
use crate::Ctx;

/// The snapshotter name sent in every request (skiffd serves one snapshotter and ignores it).
const SNAPSHOTTER: &str = "skiff";

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// List the namespace's snapshots and the image layer snapshots (KEY, PARENT, KIND).
    #[command(visible_alias = "list")]
    Ls,
    /// Create an active (writable) snapshot KEY on the committed snapshot PARENT (none: an empty one).
    #[command(
        after_help = "PARENT may be another snapshot of the namespace or an image layer \
                            snapshot (skiff.image/<chain id>, see `skiff snapshot ls`). The mounts \
                            of the new snapshot are printed with --target or --mounts."
    )]
    Prepare {
        #[command(flatten)]
        print: PrintMounts,
        /// Name of the new active snapshot.
        key: String,
        /// The committed snapshot to build on.
        parent: Option<String>,
    },
    /// Create a read-only view KEY of the committed snapshot PARENT.
    View {
        #[command(flatten)]
        print: PrintMounts,
        /// Name of the new view.
        key: String,
        /// The committed snapshot to show.
        parent: String,
    },
    /// Commit the active snapshot KEY as the committed snapshot NAME (KEY is gone afterwards).
    Commit {
        /// Name of the committed snapshot.
        name: String,
        /// The active snapshot to commit.
        key: String,
    },
    /// Remove snapshots; a snapshot that is the parent of another is refused.
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        /// Snapshots to remove, in this order.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Show the snapshots as a tree of parents and their children.
    Tree,
    /// Show the disk space and inodes snapshots use (every snapshot `ls` shows when no KEY is given).
    #[command(
        after_help = "Committed snapshots report what they held when committed; active ones are measured now."
    )]
    Usage {
        /// Sizes in bytes instead of human-readable units.
        #[arg(short = 'b')]
        bytes: bool,
        /// Snapshots to measure.
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Print the `mount` commands that mount snapshot KEY at TARGET.
    #[command(visible_aliases = ["mount", "m"])]
    Mounts {
        /// Where the printed commands mount the snapshot.
        target: PathBuf,
        /// The active snapshot or view to mount.
        key: String,
    },
    /// Print a snapshot's record (name, parent, kind, labels, times) as JSON.
    Info {
        /// The snapshot to describe.
        key: String,
    },
    /// Set labels on a snapshot (LABEL= removes one) and print its labels.
    Label {
        /// The snapshot to label.
        key: String,
        /// Labels to set, LABEL=VALUE; an empty VALUE removes the label.
        #[arg(value_name = "LABEL=VALUE", value_parser = output::key_value)]
        labels: Vec<(String, String)>,
    },
}

/// What `prepare` and `view` print about the new snapshot's mounts.
#[derive(clap::Args, Debug)]
pub struct PrintMounts {
    /// Print the `mount` commands that mount the snapshot at this path.
    #[arg(short = 't', long, value_name = "PATH")]
    target: Option<PathBuf>,
    /// Print the snapshot's mounts as JSON.
    #[arg(long)]
    mounts: bool,
}

/// Keys as the user types and sees them, translated to and from snapshots.v1's global key space.
struct Keys<'a> {
    namespace: &'a str,
}

impl<'a> Keys<'a> {
    fn new(namespace: &'a str) -> anyhow::Result<Self> {
        if namespace.is_empty() || namespace.contains('/') {
            bail!("invalid namespace {namespace:?}: must not be empty or contain '/'");
        }
        Ok(Keys { namespace })
    }

    /// The stored key of a key the user typed: image layer keys as they are, the rest in the namespace.
    fn full(&self, key: &str) -> anyhow::Result<String> {
        if key.is_empty() {
            bail!("a snapshot key must not be empty");
        }
        if key.starts_with(IMAGE_PREFIX) {
            Ok(key.to_string())
        } else {
            Ok(SnapshotKey::namespaced(self.namespace, key)?.into())
        }
    }

    /// The stored key of a snapshot this command creates: `skiff.image/` names are `skiff image pull`'s.
    fn new_key(&self, key: &str) -> anyhow::Result<String> {
        if key.starts_with(IMAGE_PREFIX) {
            bail!("cannot create snapshot {key}: keys starting with {IMAGE_PREFIX} are reserved for the layers of pulled images");
        }
        self.full(key)
    }

    /// What the namespace shows of a stored key, `None` for keys it does not see.
    fn visible(&self, full_key: &str) -> Option<String> {
        visible_key(self.namespace, full_key)
    }

    /// A stored key as shown in output: the visible key, or the stored key when the namespace does not
    /// see it (a parent outside skiff's scheme).
    fn shown(&self, full_key: &str) -> String {
        self.visible(full_key)
            .unwrap_or_else(|| full_key.to_string())
    }

    /// A failed call as an error for people: NotFound names the snapshot (`missing`, as typed), other
    /// codes give skiffd's message with the namespace's key prefix taken out.
    fn error(&self, action: &str, missing: &str, status: tonic::Status) -> anyhow::Error {
        if status.code() == tonic::Code::NotFound {
            return anyhow!("snapshot {missing} not found");
        }
        let prefix = format!("{NAMESPACE_PREFIX}{}/", self.namespace);
        let message = output::status(status).to_string().replace(&prefix, "");
        anyhow!("{action}: {message}")
    }
}

pub async fn run(ctx: &Ctx, command: SnapshotCommand) -> anyhow::Result<()> {
    let keys = Keys::new(&ctx.namespace)?;
    let mut client = SnapshotsClient::new(ctx.channel.clone());
    match command {
        SnapshotCommand::Ls => {
            let rows = visible_snapshots(&mut client, &keys)
                .await?
                .into_iter()
                .map(|s| vec![s.key, s.parent.unwrap_or_default(), s.kind.to_string()])
                .collect();
            output::table(&["KEY", "PARENT", "KIND"], rows)
        }
        SnapshotCommand::Prepare { print, key, parent } => {
            let full_parent = parent.as_deref().map(|p| keys.full(p)).transpose()?;
            let response = client
                .prepare(api::PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: keys.new_key(&key)?,
                    parent: full_parent.unwrap_or_default(),
                    labels: HashMap::new(),
                })
                .await
                .map_err(|s| keys.error(&format!("prepare {key}"), parent_name(&parent), s))?;
            print_mounts(&print, &response.into_inner().mounts)
        }
        SnapshotCommand::View { print, key, parent } => {
            let response = client
                .view(api::ViewSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: keys.new_key(&key)?,
                    parent: keys.full(&parent)?,
                    labels: HashMap::new(),
                })
                .await
                .map_err(|s| keys.error(&format!("view {key}"), &parent, s))?;
            print_mounts(&print, &response.into_inner().mounts)
        }
        SnapshotCommand::Commit { name, key } => {
            client
                .commit(api::CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: keys.new_key(&name)?,
                    key: keys.full(&key)?,
                    labels: HashMap::new(),
                })
                .await
                .map_err(|s| keys.error(&format!("commit {key} as {name}"), &key, s))?;
            Ok(())
        }
        SnapshotCommand::Rm { keys: names } => {
            for key in names {
                client
                    .remove(api::RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: keys.full(&key)?,
                    })
                    .await
                    .map_err(|s| keys.error(&format!("remove {key}"), &key, s))?;
                println!("{key}");
            }
            Ok(())
        }
        SnapshotCommand::Tree => {
            let snapshots = visible_snapshots(&mut client, &keys).await?;
            print!("{}", format_tree(&snapshots));
            Ok(())
        }
        SnapshotCommand::Usage { bytes, keys: names } => {
            let names = if names.is_empty() {
                visible_snapshots(&mut client, &keys)
                    .await?
                    .into_iter()
                    .map(|s| s.key)
                    .collect()
            } else {
                names
            };
            let mut rows = Vec::new();
            for key in names {
                let usage = client
                    .usage(api::UsageRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: keys.full(&key)?,
                    })
                    .await
                    .map_err(|s| keys.error(&format!("usage of {key}"), &key, s))?
                    .into_inner();
                rows.push(usage_row(key, &usage, bytes));
            }
            output::table(&["KEY", "SIZE", "INODES"], rows)
        }
        SnapshotCommand::Mounts { target, key } => {
            let mounts = client
                .mounts(api::MountsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: keys.full(&key)?,
                })
                .await
                .map_err(|s| keys.error(&format!("mounts of {key}"), &key, s))?
                .into_inner()
                .mounts;
            print_mount_commands(&target, &mounts);
            Ok(())
        }
        SnapshotCommand::Info { key } => {
            let info = stat(&mut client, &keys, &key).await?;
            println!("{}", info_json(&keys, &info)?);
            Ok(())
        }
        SnapshotCommand::Label { key, labels } => {
            let info = if labels.is_empty() {
                stat(&mut client, &keys, &key).await?
            } else {
                let paths = labels.iter().map(|(k, _)| format!("labels.{k}")).collect();
                let set = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
                client
                    .update(api::UpdateSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        info: Some(api::Info {
                            name: keys.full(&key)?,
                            labels: set,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask { paths }),
                    })
                    .await
                    .map_err(|s| keys.error(&format!("label {key}"), &key, s))?
                    .into_inner()
                    .info
                    .with_context(|| format!("label {key}: skiffd sent no record"))?
            };
            println!("{}", output::labels(&info.labels));
            Ok(())
        }
    }
}

/// The record of the snapshot `key` (as typed).
async fn stat(
    client: &mut SnapshotsClient<Channel>,
    keys: &Keys<'_>,
    key: &str,
) -> anyhow::Result<api::Info> {
    client
        .stat(api::StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: keys.full(key)?,
        })
        .await
        .map_err(|s| keys.error(&format!("stat {key}"), key, s))?
        .into_inner()
        .info
        .with_context(|| format!("stat {key}: skiffd sent no record"))
}

/// The name NotFound refers to when preparing: the parent (there is no prepare without one that fails so).
fn parent_name(parent: &Option<String>) -> &str {
    parent.as_deref().unwrap_or("")
}

/// A snapshot as the namespace sees it.
#[derive(Debug, Clone, PartialEq)]
struct Visible {
    key: String,
    parent: Option<String>,
    kind: Kind,
}

/// A snapshot's kind, named as ctr names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unknown,
    View,
    Active,
    Committed,
}

impl From<i32> for Kind {
    fn from(value: i32) -> Self {
        match api::Kind::try_from(value) {
            Ok(api::Kind::View) => Kind::View,
            Ok(api::Kind::Active) => Kind::Active,
            Ok(api::Kind::Committed) => Kind::Committed,
            Ok(api::Kind::Unknown) | Err(_) => Kind::Unknown,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Unknown => "Unknown",
            Kind::View => "View",
            Kind::Active => "Active",
            Kind::Committed => "Committed",
        })
    }
}

/// Every snapshot the namespace sees, in skiffd's order (by stored key).
async fn visible_snapshots(
    client: &mut SnapshotsClient<Channel>,
    keys: &Keys<'_>,
) -> anyhow::Result<Vec<Visible>> {
    let mut stream = client
        .list(api::ListSnapshotsRequest {
            snapshotter: SNAPSHOTTER.into(),
            filters: Vec::new(),
        })
        .await
        .map_err(|s| keys.error("list snapshots", "", s))?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| keys.error("list snapshots", "", s))?
    {
        infos.extend(message.info);
    }
    Ok(visible(keys, infos))
}

fn visible(keys: &Keys<'_>, infos: Vec<api::Info>) -> Vec<Visible> {
    infos
        .into_iter()
        .filter_map(|info| {
            let key = keys.visible(&info.name)?;
            let parent = (!info.parent.is_empty()).then(|| keys.shown(&info.parent));
            Some(Visible {
                key,
                parent,
                kind: Kind::from(info.kind),
            })
        })
        .collect()
}

/// The snapshots as ctr's tree: each root (no parent, or a parent the namespace does not see) at the left,
/// its children below it, two spaces deeper per level behind `\_`.
fn format_tree(snapshots: &[Visible]) -> String {
    let known: HashSet<&str> = snapshots.iter().map(|s| s.key.as_str()).collect();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut roots = Vec::new();
    for snapshot in snapshots {
        match snapshot.parent.as_deref() {
            Some(parent) if known.contains(parent) => {
                children.entry(parent).or_default().push(&snapshot.key)
            }
            _ => roots.push(snapshot.key.as_str()),
        }
    }
    let mut out = String::new();
    // Depth-first with an explicit stack, children in listing order.
    let mut stack: Vec<(&str, usize)> = roots.into_iter().rev().map(|r| (r, 0)).collect();
    let mut printed = HashSet::new();
    while let Some((key, level)) = stack.pop() {
        if !printed.insert(key) {
            continue;
        }
        if level == 0 {
            out.push_str(&format!(" {key}\n"));
        } else {
            out.push_str(&format!("{}\\_ {key}\n", "  ".repeat(level)));
        }
        if let Some(below) = children.get(key) {
            stack.extend(below.iter().rev().map(|child| (*child, level + 1)));
        }
    }
    out
}

/// A `usage` row: key, size (bytes with `-b`, else human-readable) and inodes.
fn usage_row(key: String, usage: &api::UsageResponse, bytes: bool) -> Vec<String> {
    let size = u64::try_from(usage.size).unwrap_or(0);
    let size = if bytes {
        size.to_string()
    } else {
        output::size(size)
    };
    vec![key, size, usage.inodes.to_string()]
}

/// `mount -t TYPE SOURCE TARGET -o OPTIONS` per mount, as ctr prints them.
fn mount_commands(target: &Path, mounts: &[Mount]) -> Vec<String> {
    mounts
        .iter()
        .map(|mount| {
            let below = mount.target.trim_start_matches('/');
            let at = if below.is_empty() {
                target.to_path_buf()
            } else {
                target.join(below)
            };
            let mut line = format!(
                "mount -t {} {} {}",
                mount.r#type,
                mount.source,
                at.display()
            );
            if !mount.options.is_empty() {
                line.push_str(&format!(" -o {}", mount.options.join(",")));
            }
            line
        })
        .collect()
}

fn print_mount_commands(target: &Path, mounts: &[Mount]) {
    for line in mount_commands(target, mounts) {
        println!("{line}");
    }
}

fn print_mounts(print: &PrintMounts, mounts: &[Mount]) -> anyhow::Result<()> {
    if let Some(target) = &print.target {
        print_mount_commands(target, mounts);
    }
    if print.mounts {
        println!("{}", mounts_json(mounts)?);
    }
    Ok(())
}

/// The mounts as JSON, with ctr's field names.
fn mounts_json(mounts: &[Mount]) -> anyhow::Result<String> {
    let list: Vec<serde_json::Value> = mounts
        .iter()
        .map(|m| {
            let mut value = serde_json::json!({
                "Type": m.r#type,
                "Source": m.source,
                "Options": m.options,
            });
            if !m.target.is_empty() {
                value["Target"] = serde_json::Value::from(m.target.clone());
            }
            value
        })
        .collect();
    serde_json::to_string_pretty(&list).context("format mounts as JSON")
}

/// A snapshot's record as JSON, with ctr's field names; keys as the namespace shows them.
fn info_json(keys: &Keys<'_>, info: &api::Info) -> anyhow::Result<String> {
    let time = |t: &Option<prost_types::Timestamp>| {
        t.and_then(|t| SystemTime::try_from(t).ok())
            .map(output::rfc3339)
    };
    let mut value = serde_json::json!({
        "Kind": Kind::from(info.kind).to_string(),
        "Name": keys.shown(&info.name),
        "Created": time(&info.created_at),
        "Updated": time(&info.updated_at),
    });
    if !info.parent.is_empty() {
        value["Parent"] = keys.shown(&info.parent).into();
    }
    if !info.labels.is_empty() {
        value["Labels"] = serde_json::to_value(&info.labels).context("labels as JSON")?;
    }
    serde_json::to_string_pretty(&value).context("format snapshot info as JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(key: &str, parent: Option<&str>, kind: Kind) -> Visible {
        Visible {
            key: key.into(),
            parent: parent.map(Into::into),
            kind,
        }
    }

    fn info(name: &str, parent: &str, kind: api::Kind) -> api::Info {
        api::Info {
            name: name.into(),
            parent: parent.into(),
            kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn keys_are_namespaced_except_image_layers() {
        let keys = Keys::new("a").unwrap();
        assert_eq!(keys.full("x").unwrap(), "skiff.ns/a/x");
        assert_eq!(
            keys.full("skiff.image/sha256:ab").unwrap(),
            "skiff.image/sha256:ab"
        );
        assert!(keys.new_key("skiff.image/sha256:ab").is_err());
        assert!(keys.full("").is_err());
        assert!(Keys::new("a/b").is_err());
        assert!(Keys::new("").is_err());
    }

    #[test]
    fn lists_only_what_the_namespace_sees() {
        let keys = Keys::new("a").unwrap();
        let listed = visible(
            &keys,
            vec![
                info("a/1/sha256:c", "", api::Kind::Committed),
                info("skiff.image/sha256:l1", "", api::Kind::Committed),
                info("skiff.ns/a.b/x", "skiff.image/sha256:l1", api::Kind::Active),
                info("skiff.ns/a/base", "", api::Kind::Committed),
                info("skiff.ns/a/x", "skiff.image/sha256:l1", api::Kind::Active),
                info("skiff.ns/a/y", "skiff.ns/a/base", api::Kind::View),
            ],
        );
        assert_eq!(
            listed,
            vec![
                snapshot("skiff.image/sha256:l1", None, Kind::Committed),
                snapshot("base", None, Kind::Committed),
                snapshot("x", Some("skiff.image/sha256:l1"), Kind::Active),
                snapshot("y", Some("base"), Kind::View),
            ]
        );
    }

    #[test]
    fn tree_shows_children_under_their_parents() {
        let tree = format_tree(&[
            snapshot("base", None, Kind::Committed),
            snapshot("layer2", Some("base"), Kind::Committed),
            snapshot("other", None, Kind::Committed),
            snapshot("work", Some("layer2"), Kind::Active),
            snapshot("look", Some("base"), Kind::View),
            snapshot("orphan", Some("gone"), Kind::Active),
        ]);
        assert_eq!(
            tree,
            " base\n  \\_ layer2\n    \\_ work\n  \\_ look\n other\n orphan\n"
        );
        assert_eq!(format_tree(&[]), "");
    }

    #[test]
    fn usage_sizes_are_human_readable_unless_bytes() {
        let usage = api::UsageResponse {
            size: 3 << 20,
            inodes: 12,
        };
        assert_eq!(usage_row("k".into(), &usage, true), ["k", "3145728", "12"]);
        assert_eq!(
            usage_row("k".into(), &usage, false),
            ["k", "3.00 MiB", "12"]
        );
        let odd = api::UsageResponse {
            size: -1,
            inodes: 0,
        };
        assert_eq!(usage_row("k".into(), &odd, true), ["k", "0", "0"]);
    }

    #[test]
    fn mount_commands_as_ctr_prints_them() {
        let overlay = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "lowerdir=/l".into(),
                "upperdir=/u".into(),
                "workdir=/w".into(),
            ],
        };
        let bind = Mount {
            r#type: "bind".into(),
            source: "/s/fs".into(),
            target: "/sub".into(),
            options: vec!["ro".into(), "rbind".into()],
        };
        assert_eq!(
            mount_commands(Path::new("/mnt"), &[overlay, bind]),
            [
                "mount -t overlay overlay /mnt -o lowerdir=/l,upperdir=/u,workdir=/w",
                "mount -t bind /s/fs /mnt/sub -o ro,rbind",
            ]
        );
    }

    #[test]
    fn errors_name_the_snapshot_as_typed() {
        let keys = Keys::new("a").unwrap();
        let err = keys.error(
            "remove x",
            "x",
            tonic::Status::not_found("snapshot \"skiff.ns/a/x\" not found"),
        );
        assert_eq!(err.to_string(), "snapshot x not found");
        let err = keys.error(
            "remove base",
            "base",
            tonic::Status::failed_precondition(
                "snapshot \"skiff.ns/a/base\" has a child \"skiff.ns/a/x\"; remove it first",
            ),
        );
        assert_eq!(
            err.to_string(),
            "remove base: snapshot \"base\" has a child \"x\"; remove it first"
        );
    }

    #[test]
    fn info_is_json_with_ctr_field_names() {
        let keys = Keys::new("a").unwrap();
        let mut record = info("skiff.ns/a/x", "skiff.ns/a/base", api::Kind::Active);
        record.labels.insert("k".into(), "v".into());
        record.created_at = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        });
        let value: serde_json::Value =
            serde_json::from_str(&info_json(&keys, &record).unwrap()).unwrap();
        assert_eq!(value["Name"], "x");
        assert_eq!(value["Parent"], "base");
        assert_eq!(value["Kind"], "Active");
        assert_eq!(value["Labels"]["k"], "v");
        assert_eq!(value["Created"], "2023-11-14T22:13:20Z");
        assert_eq!(value["Updated"], serde_json::Value::Null);
    }
}
