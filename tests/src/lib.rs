//! The test bed kit: real components for skiff's end-to-end tests.
//!
//! Every end-to-end test starts with [`require`] (it fails, never skips, when a tool is
//! missing), then starts what it needs — a [`Registry`] (anonymous, Basic or Bearer with the
//! kit's [`TokenServer`]), images built with [`ImageSpec`] / [`LayerSpec`] and pushed with
//! [`push_layout`], a throwaway [`Containerd`], eStargz conversion with [`convert_estargz`], a
//! [`FaultProxy`] in front of a registry, and [`Skiffd`]. Every component lives in its own
//! temporary directory on 127.0.0.1 and is stopped, unmounted and removed when dropped, also
//! when the test panics. Blocking API: usable from plain `#[test]`s and from async tests (the
//! servers run on their own threads and runtimes).

pub mod client_config;
pub mod containerd;
pub mod fault_proxy;
pub mod http_client;
pub mod image;
pub mod lazy_setup;
pub mod mounts;
pub mod prereq;
pub mod process;
pub mod registry;
mod server;
pub mod skiffd;
pub mod skopeo;
pub mod token_server;

pub use client_config::{write_docker_config, write_hosts_toml, HostEntry};
pub use containerd::{
    convert_estargz, convert_image, convert_in_own_containerd, optimize_image, Containerd,
    ContainerdConfig, ConvertedImage, LazyFormat, ProxyPlugin,
};
pub use fault_proxy::{Fault, FaultProxy, ProxiedRequest};
pub use http_client::{http_get, http_request, HttpResponse};
pub use image::{
    every_entry_type_layers, generated_bytes, sha256_digest, BuiltImage, BuiltLayer, Entry,
    EntryKind, FileContents, ImageLayer, ImageSpec, LayerBlobFile, LayerCompression, LayerSpec,
    MultiPlatformSpec, OciLayout, Platform,
};
pub use lazy_setup::{lazy_mounts_under, write_lazy_skiffd_config, write_skiffd_config, LazyMount};
pub use mounts::{mounts_under, unmount_all_under};
pub use prereq::require;
pub use process::{processes_mentioning, wait_until, ChildProcess};
pub use registry::{Registry, RegistryAuth};
pub use skiffd::{cargo_bin, Skiffd, SkiffdOptions};
pub use skopeo::{inspect, inspect_raw, push_layout};
pub use token_server::{TokenRequest, TokenServer};
