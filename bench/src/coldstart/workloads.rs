//! The workloads file (pinned format): which images to start, with which command, and the stdout line
//! that says the workload is ready.
//!
//! ```toml
//! [[workload]]
//! image = "py"                              # repository in the benchmark registry
//! variants = ["org", "esgz", "esgzopt"]     # tags: plain gzip, eStargz, optimized eStargz
//! command = ["python3", "-c", "print('ready')"]
//! ready = "^ready$"                         # regex on a stdout line
//! ```
//!
//! An optional `name` tells apart two workloads on one image (default: the image); results are keyed by
//! it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::Deserialize;

/// The tags a corpus image is pushed under.
pub const VARIANTS: [&str; 3] = ["org", "esgz", "esgzopt"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    workload: Vec<RawWorkload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    #[serde(default)]
    name: Option<String>,
    image: String,
    variants: Vec<String>,
    command: Vec<String>,
    ready: String,
}

/// One workload: an image (repository), the variants (tags) to start, the command, and the ready line.
#[derive(Debug, Clone)]
pub struct Workload {
    /// What the results call it: `name` from the file, or the image.
    pub name: String,
    pub image: String,
    pub variants: Vec<String>,
    pub command: Vec<String>,
    pub ready: Regex,
}

impl Workload {
    /// `image:variant` relative to the benchmark registry.
    pub fn reference(&self, variant: &str) -> String {
        format!("{}:{variant}", self.image)
    }
}

/// Parses a workloads file's text; every error names the workload and field.
pub fn parse(text: &str) -> Result<Vec<Workload>> {
    let file: File = toml::from_str(text).context("not a workloads file")?;
    if file.workload.is_empty() {
        bail!("no [[workload]] entries");
    }
    file.workload
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let name = raw.name.clone().unwrap_or_else(|| raw.image.clone());
            let which = format!("workload {} ({name:?})", i + 1);
            if name.is_empty() || name.contains([',', '/']) || name.contains(char::is_whitespace) {
                bail!("{which}: name must be a word without commas, slashes or spaces");
            }
            if raw.image.is_empty()
                || raw.image.contains(':')
                || raw.image.chars().any(char::is_whitespace)
            {
                bail!("{which}: image must be a repository name without tag or spaces");
            }
            if raw.variants.is_empty() {
                bail!("{which}: no variants");
            }
            if let Some(bad) = raw.variants.iter().find(|v| {
                v.is_empty() || v.contains([':', '@', '/']) || v.contains(char::is_whitespace)
            }) {
                bail!("{which}: variant {bad:?} is not a tag");
            }
            if raw.command.is_empty() {
                bail!("{which}: empty command");
            }
            let ready = Regex::new(&raw.ready)
                .with_context(|| format!("{which}: ready is not a regular expression"))?;
            Ok(Workload {
                name,
                image: raw.image,
                variants: raw.variants,
                command: raw.command,
                ready,
            })
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|workloads| {
            for (i, w) in workloads.iter().enumerate() {
                if workloads[..i].iter().any(|earlier| earlier.name == w.name) {
                    bail!(
                        "two workloads are called {:?}: give one a distinct `name`",
                        w.name
                    );
                }
            }
            Ok(workloads)
        })
}

/// Reads and parses a workloads file.
pub fn load(path: &Path) -> Result<Vec<Workload>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read workloads file {}", path.display()))?;
    parse(&text).with_context(|| format!("workloads file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_example_parses() {
        let workloads = parse(
            r#"
[[workload]]
image = "py"
variants = ["org", "esgz", "esgzopt"]
command = ["python3", "-c", "print('ready')"]
ready = "^ready$"
"#,
        )
        .unwrap();
        assert_eq!(workloads.len(), 1);
        let w = &workloads[0];
        assert_eq!(w.reference("esgz"), "py:esgz");
        assert_eq!(w.name, "py");
        assert_eq!(w.command, ["python3", "-c", "print('ready')"]);
        assert!(w.ready.is_match("ready") && !w.ready.is_match("not ready"));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let case = |body: &str| format!("{:#}", parse(body).unwrap_err());
        assert!(case("").contains("no [[workload]]"));
        let base = |field: &str| {
            let mut fields = vec![
                ("image", r#""py""#),
                ("variants", r#"["org"]"#),
                ("command", r#"["true"]"#),
                ("ready", r#""^ready$""#),
            ];
            if let Some((name, value)) = field.split_once('=') {
                fields.retain(|(n, _)| *n != name);
                fields.push((name, value));
            }
            let body: String = fields.iter().map(|(n, v)| format!("{n} = {v}\n")).collect();
            case(&format!("[[workload]]\n{body}"))
        };
        assert!(base(r#"image="py:1""#).contains("repository name"));
        assert!(base(r#"variants=[]"#).contains("no variants"));
        assert!(base(r#"variants=["a/b"]"#).contains("not a tag"));
        assert!(base(r#"command=[]"#).contains("empty command"));
        assert!(base(r#"ready="(""#).contains("not a regular expression"));
        assert!(case("[[workload]]\nimage = \"py\"\nextra = 1\n").contains("not a workloads file"));
        assert!(base(r#"name="a b""#).contains("name must be"));
        let twice = "[[workload]]\nimage = \"py\"\nvariants = [\"org\"]\ncommand = [\"true\"]\nready = \"r\"\n";
        assert!(case(&format!("{twice}{twice}")).contains("distinct `name`"));
        let named = parse(&format!("{twice}name = \"py-all\"\n{twice}")).unwrap();
        assert_eq!(named[0].name, "py-all");
        assert_eq!(named[0].image, "py");
    }
}
