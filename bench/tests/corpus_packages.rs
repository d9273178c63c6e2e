//! The corpus's PyPI and npm layers, built by the host's real pip and npm from the package registries the
//! machine is configured for: on top of a stand-in Debian base (a dpkg status naming python3 3.11 and
//! glibc 2.36), a `pip install six` layer lands in the image's dist-packages and an `npm install
//! is-number` layer in the project directory with the project's own file; a second build of either comes
//! from the cache.

use std::io::Read;
use std::path::Path;

use anyhow::{ensure, Context};
use skiff_bench::corpus::debian::{DebianBuilder, Step};
use skiff_tests::{require, LayerBlobFile};

/// A base "layer" that is only a tree: the steps above it read its dpkg status, never its blob.
fn stand_in_base(dir: &Path) -> anyhow::Result<Step> {
    let tree = dir.join("base");
    std::fs::create_dir_all(tree.join("var/lib/dpkg"))?;
    std::fs::write(
        tree.join("var/lib/dpkg/status"),
        "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u4\n\n\
         Package: python3\nStatus: install ok installed\nVersion: 3.11.2-1+b1\n",
    )?;
    Ok(Step {
        key: "stand-in-base".into(),
        tree,
        layer: LayerBlobFile {
            path: dir.join("base.tar.gz"),
            digest: String::new(),
            diff_id: String::new(),
            size: 0,
            media_type: String::new(),
        },
    })
}

/// The paths in a gzip layer blob.
fn entries(layer: &LayerBlobFile) -> anyhow::Result<Vec<String>> {
    let file = std::fs::File::open(&layer.path)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut paths = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        paths.push(entry.path()?.to_string_lossy().into_owned());
        let mut sink = Vec::new();
        entry.read_to_end(&mut sink)?;
    }
    Ok(paths)
}

#[test]
fn pypi_and_npm_layers_land_where_the_image_looks() -> anyhow::Result<()> {
    require(&["python3", "pip", "npm"])?;
    let dir = tempfile::tempdir()?;
    let base = stand_in_base(dir.path())?;
    let builder = DebianBuilder::new(&dir.path().join("cache"))?;

    let pip = builder.pip_install(std::slice::from_ref(&base), &["six"])?;
    let site = "usr/local/lib/python3.11/dist-packages";
    ensure!(
        pip.tree.join(site).join("six.py").is_file(),
        "six.py is not in the image's dist-packages"
    );
    let listed = entries(&pip.layer)?;
    ensure!(
        listed
            .iter()
            .any(|p| p.trim_start_matches("./") == format!("{site}/six.py")),
        "the layer lacks {site}/six.py: {listed:?}"
    );
    ensure!(
        !listed.iter().any(|p| p.contains("var/lib/dpkg")),
        "the pip layer carries the base's files: {listed:?}"
    );

    let npm_install = || {
        builder.npm_install(
            std::slice::from_ref(&base),
            "/opt/app",
            &["is-number"],
            &[(
                "index.js",
                "console.log(require('is-number')(5) ? 'ready' : 'no');\n",
            )],
        )
    };
    let npm = npm_install()?;
    let listed = entries(&npm.layer)?;
    for wanted in [
        "opt/app/index.js",
        "opt/app/node_modules/is-number/index.js",
    ] {
        ensure!(
            listed.iter().any(|p| p.trim_start_matches("./") == wanted),
            "the npm layer lacks {wanted}: {listed:?}"
        );
    }

    // Built once: the same inputs come from the cache, blob and all.
    let again = builder.pip_install(std::slice::from_ref(&base), &["six"])?;
    ensure!(again.key == pip.key && again.layer.digest == pip.layer.digest);
    let again = npm_install().context("the cached npm layer")?;
    ensure!(again.layer.digest == npm.layer.digest);
    Ok(())
}
