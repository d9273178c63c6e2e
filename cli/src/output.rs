//! Output helpers shared by the commands: ctr-like tables and readable errors.

use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::Context;

/// Writes rows as a table with aligned columns, like ctr (Go's tabwriter).
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<()> {
    let mut out = tabwriter::TabWriter::new(std::io::stdout().lock()).padding(4);
    writeln!(out, "{}", header.join("\t"))?;
    for row in rows {
        writeln!(out, "{}", row.join("\t"))?;
    }
    out.flush().context("write to stdout")
}

/// What `ls` prints: with `quiet` each item's id alone, one a line; otherwise a table of `header` and a
/// row per item.
pub fn listing<T>(
    items: &[T],
    quiet: bool,
    id: impl Fn(&T) -> &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if quiet {
        items.iter().for_each(|item| println!("{}", id(item)));
        return Ok(());
    }
    table(header, items.iter().map(row).collect())
}

/// A gRPC status as an error whose text is the daemon's message (its code only when there is no message).
pub fn status(status: tonic::Status) -> anyhow::Error {
    if status.message().is_empty() {
        anyhow::anyhow!("{}", status.code())
    } else {
        anyhow::anyhow!("{}", status.message())
    }
}

pub fn size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// "3 minutes" for a creation time, as ctr's AGE column.
pub fn age(time: Option<&prost_types::Timestamp>) -> String {
    let Some(time) = time.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return "-".to_string();
    };
    let elapsed = SystemTime::now()
        .duration_since(time)
        .unwrap_or(Duration::ZERO);
    indicatif::HumanDuration(elapsed).to_string()
}

/// RFC 3339 in UTC (`2026-01-02T03:04:05Z`), as containerd writes and parses times.
pub fn rfc3339(time: SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn labels(labels: &std::collections::HashMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// Parses `KEY=VALUE` (clap value parser for `--label`).
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}
