//! Names of tar entries as paths inside a snapshot: cleaned lexically before anything touches the disk.
//! A leading `/` and `.` components are dropped (`/etc/hosts`, `./etc/hosts` and `etc/hosts` are the same
//! entry); a `..` component is refused outright (no real layer needs one, and a malicious one uses it to
//! climb out). What remains is resolved on disk only relative to the snapshot's root (see `tree`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Prefix of an OCI whiteout entry's file name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// File name of the entry that marks its directory opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A cleaned path inside a snapshot: zero or more normal components (zero is the root itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InnerPath(Vec<Vec<u8>>);

/// Why a tar path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    ParentComponent,
    NulByte,
}

impl PathProblem {
    pub fn reason(self) -> &'static str {
        match self {
            PathProblem::ParentComponent => "`..` components are not allowed",
            PathProblem::NulByte => "a NUL byte in the name",
        }
    }
}

impl InnerPath {
    /// Cleans a tar entry name or hardlink target.
    pub fn parse(raw: &Path) -> Result<InnerPath, PathProblem> {
        if raw.as_os_str().as_bytes().contains(&0) {
            return Err(PathProblem::NulByte);
        }
        let mut components = Vec::new();
        for component in raw.components() {
            match component {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => return Err(PathProblem::ParentComponent),
                Component::Normal(name) => components.push(name.as_bytes().to_vec()),
            }
        }
        Ok(InnerPath(components))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last component (`None` for the root).
    pub fn file_name(&self) -> Option<&OsStr> {
        self.0.last().map(|name| OsStr::from_bytes(name))
    }

    /// The path without its last component.
    pub fn parent(&self) -> InnerPath {
        let mut parent = self.0.clone();
        parent.pop();
        InnerPath(parent)
    }

    /// The components, each one file name.
    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0.iter().map(|name| OsStr::from_bytes(name))
    }

    /// The first `n` components.
    pub fn prefix(&self, n: usize) -> InnerPath {
        InnerPath(self.0[..n.min(self.0.len())].to_vec())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A relative path for `openat2` (`.` for the root).
    pub fn relative(&self) -> PathBuf {
        if self.0.is_empty() {
            return PathBuf::from(".");
        }
        self.components().collect()
    }

    /// `parent/name`.
    pub fn join(&self, name: &OsStr) -> InnerPath {
        let mut joined = self.0.clone();
        joined.push(name.as_bytes().to_vec());
        InnerPath(joined)
    }
}

impl std::fmt::Display for InnerPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.relative().display())
    }
}

/// What an entry's file name says it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// Not a whiteout: an ordinary entry.
    None,
    /// `.wh..wh..opq`: the directory is opaque.
    Opaque,
    /// `.wh.NAME`: `NAME` is deleted.
    Delete(&'a OsStr),
}

/// Classifies a file name; `Err` for a whiteout that names nothing (`.wh.`, `.wh..`, `.wh...`).
pub fn whiteout(name: &OsStr) -> Result<Whiteout<'_>, &'static str> {
    let bytes = name.as_bytes();
    if bytes == OPAQUE_MARKER.as_bytes() {
        return Ok(Whiteout::Opaque);
    }
    match bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        None => Ok(Whiteout::None),
        Some(b"") | Some(b".") | Some(b"..") => Err("a whiteout must name a file"),
        Some(hidden) => Ok(Whiteout::Delete(OsStr::from_bytes(hidden))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Vec<String>, PathProblem> {
        InnerPath::parse(Path::new(raw)).map(|p| {
            p.components()
                .map(|c| c.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn leading_slash_and_dots_are_dropped() {
        for raw in [
            "etc/hosts",
            "/etc/hosts",
            "./etc/hosts",
            "etc//./hosts",
            "etc/hosts/",
        ] {
            assert_eq!(parse(raw).unwrap(), ["etc", "hosts"], "{raw}");
        }
        for raw in [".", "./", "/", ""] {
            assert!(InnerPath::parse(Path::new(raw)).unwrap().is_root(), "{raw}");
        }
    }

    #[test]
    fn parent_components_are_refused() {
        for raw in ["../x", "/../x", "a/../../x", "a/..", "..", "./a/../b"] {
            assert_eq!(parse(raw), Err(PathProblem::ParentComponent), "{raw}");
        }
        // A name that merely starts with dots is a name.
        assert_eq!(parse("..a/...").unwrap(), ["..a", "..."]);
    }

    #[test]
    fn nul_bytes_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let raw = Path::new(OsStr::from_bytes(b"a\0b"));
        assert_eq!(InnerPath::parse(raw), Err(PathProblem::NulByte));
    }

    #[test]
    fn parent_prefix_join_and_display() {
        let path = InnerPath::parse(Path::new("a/b/c")).unwrap();
        assert_eq!(path.parent(), InnerPath::parse(Path::new("a/b")).unwrap());
        assert_eq!(path.prefix(1).relative(), PathBuf::from("a"));
        assert_eq!(path.file_name(), Some(OsStr::new("c")));
        assert_eq!(path.parent().join(OsStr::new("d")).to_string(), "/a/b/d");
        assert_eq!(
            InnerPath::parse(Path::new("/")).unwrap().relative(),
            PathBuf::from(".")
        );
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(whiteout(OsStr::new("file")), Ok(Whiteout::None));
        assert_eq!(whiteout(OsStr::new(".wh..wh..opq")), Ok(Whiteout::Opaque));
        assert_eq!(
            whiteout(OsStr::new(".wh.gone")),
            Ok(Whiteout::Delete(OsStr::new("gone")))
        );
        assert_eq!(
            whiteout(OsStr::new(".wh..hidden")),
            Ok(Whiteout::Delete(OsStr::new(".hidden")))
        );
        for bad in [".wh.", ".wh..", ".wh..."] {
            assert!(whiteout(OsStr::new(bad)).is_err(), "{bad}");
        }
    }
}
