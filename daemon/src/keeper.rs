//! skiffd's side of the keeper (`skiff-keeper`, one per root at `ROOT/keeper.sock`): every lazy mount's
//! FUSE connection is handed to it as soon as it is mounted, and at startup the connections it still
//! holds are taken back and served again ("takeover"), so containers never see skiffd go away.
//!
//! What the keeper holds per mount: the `/dev/fuse` descriptor under the mountpoint, and a meta string
//! ([`MountMeta`]: the layer's digest and the connection's `INIT` request). A connection is served again
//! only if the snapshot at that mountpoint is still the same layer, the connection is alive and the mount
//! is still in place; otherwise the mount is aborted and detached, and the layer mounted afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use serde::{Deserialize, Serialize};
use skiff_fuse::connection::FuseConnection;
use skiff_fuse::manager::ConnectionKeeper;
use skiff_keeper::{KeeperClient, KeeperError};
use skiff_types::{Digest, LayerDescriptor};
use tracing::{info, warn};

use crate::config::Config;

/// What skiffd tells the keeper of one mount.
#[derive(Debug, Serialize, Deserialize)]
struct MountMeta {
    layer: String,
    /// The connection's `INIT` request, base64.
    init: String,
}

/// The connection to the keeper, reopened (and the keeper started again) when it breaks.
pub struct Keeper {
    socket: PathBuf,
    binary: PathBuf,
    log: PathBuf,
    client: Mutex<Option<KeeperClient>>,
    /// What the keeper held when skiffd started, by mountpoint, not yet taken back or dropped.
    held: Mutex<HashMap<PathBuf, String>>,
}

impl Keeper {
    /// Connects to the root's keeper, starting it if none answers; `None` (logged) when the keeper is
    /// disabled or cannot be started: then lazy mounts die with skiffd.
    pub fn start(config: &Config) -> Option<Arc<Keeper>> {
        if !config.keeper.enabled {
            info!("keeper disabled: lazy mounts end with skiffd");
            return None;
        }
        let binary = match &config.keeper.binary {
            Some(binary) => binary.clone(),
            None => match std::env::current_exe() {
                Ok(exe) => exe.with_file_name("skiff-keeper"),
                Err(err) => {
                    warn!(error = %err, "cannot locate skiff-keeper; lazy mounts end with skiffd");
                    return None;
                }
            },
        };
        let keeper = Keeper {
            socket: config.keeper_socket(),
            binary,
            log: config.root.join("keeper.log"),
            client: Mutex::new(None),
            held: Mutex::new(HashMap::new()),
        };
        let held = match keeper.call(|client| client.list()) {
            Ok(held) => held,
            Err(err) => {
                warn!(
                    error = %skiff_types::error_chain(&err),
                    binary = %keeper.binary.display(),
                    "no keeper: lazy mounts end with skiffd"
                );
                return None;
            }
        };
        if !held.is_empty() {
            info!(
                connections = held.len(),
                "the keeper holds lazy mounts of an earlier skiffd"
            );
        }
        *keeper.held() = held
            .into_iter()
            .map(|entry| (PathBuf::from(entry.key), entry.meta))
            .collect();
        Some(Arc::new(keeper))
    }

    fn held(&self) -> MutexGuard<'_, HashMap<PathBuf, String>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` on the connection, reconnecting (and starting the keeper) once if it fails.
    fn call<T>(
        &self,
        op: impl Fn(&KeeperClient) -> Result<T, KeeperError>,
    ) -> Result<T, KeeperError> {
        self.call_noting_restart(op).map(|(value, _)| value)
    }

    /// Like [`call`](Self::call), also saying whether the connection had to be made anew (the keeper
    /// died: what it held is gone).
    fn call_noting_restart<T>(
        &self,
        op: impl Fn(&KeeperClient) -> Result<T, KeeperError>,
    ) -> Result<(T, bool), KeeperError> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connected) = client.as_ref() {
            match op(connected) {
                Ok(value) => return Ok((value, false)),
                Err(KeeperError::Io(err)) => {
                    warn!(error = %err, "keeper connection lost; reconnecting");
                }
                Err(err) => return Err(err),
            }
        }
        let reconnected = client.is_some();
        *client = None;
        let connected = KeeperClient::connect_or_spawn(&self.socket, &self.binary, &self.log)?;
        let value = op(&connected)?;
        *client = Some(connected);
        Ok((value, reconnected))
    }

    /// Checks the keeper is there, starting a new one if it died; `true` when it did (the caller hands
    /// it every mount again).
    pub fn restarted(&self) -> bool {
        match self.call_noting_restart(|client| client.list()) {
            Ok((_, restarted)) => restarted,
            Err(err) => {
                warn!(error = %skiff_types::error_chain(&err), "no keeper: lazy mounts end with skiffd");
                false
            }
        }
    }

    /// The connection an earlier skiffd mounted at `mountpoint` for `layer`, if the keeper holds it and it
    /// can be served again. Whatever cannot is forgotten (and its mount aborted and detached by the
    /// caller's fresh mount).
    pub fn take_back(&self, mountpoint: &Path, layer: &Digest) -> Option<FuseConnection> {
        let meta = self.held().remove(mountpoint)?;
        let key = mountpoint.to_string_lossy();
        let refuse = |why: &str| {
            warn!(mountpoint = %mountpoint.display(), why, "cannot take the lazy mount over; mounting it afresh");
            self.forget(mountpoint);
            None
        };
        let meta: MountMeta = match serde_json::from_str(&meta) {
            Ok(meta) => meta,
            Err(_) => return refuse("the keeper's record is malformed"),
        };
        if meta.layer != layer.to_string() {
            return refuse("the keeper holds another layer there");
        }
        let Ok(init) = base64::engine::general_purpose::STANDARD.decode(&meta.init) else {
            return refuse("the keeper's record is malformed");
        };
        let device = match self.call(|client| client.lend(&key)) {
            Ok(Some((_, device))) => device,
            Ok(None) => return refuse("the keeper no longer holds it"),
            Err(err) => {
                warn!(error = %skiff_types::error_chain(&err), "keeper");
                return refuse("the keeper did not lend it");
            }
        };
        let connection = FuseConnection::from_parts(device, init);
        if !connection.is_alive() {
            return refuse("its connection has ended");
        }
        match skiff_fuse::connection::is_mount_point(mountpoint) {
            Ok(true) => Some(connection),
            _ => refuse("it is no longer mounted there"),
        }
    }

    /// Mountpoints the keeper held at startup that no snapshot claimed: forgotten, their mounts (if any)
    /// aborted and detached. Called once every remote snapshot is mounted again.
    pub fn drop_unclaimed(&self) {
        let unclaimed: Vec<PathBuf> = self.held().drain().map(|(path, _)| path).collect();
        for mountpoint in unclaimed {
            warn!(mountpoint = %mountpoint.display(), "the keeper held a mount no snapshot claims; detaching it");
            if let Err(err) = skiff_fuse::connection::abort_and_detach(&mountpoint) {
                warn!(mountpoint = %mountpoint.display(), error = %err, "cannot detach");
            }
            self.forget(&mountpoint);
        }
    }
}

impl ConnectionKeeper for Keeper {
    fn keep(&self, mountpoint: &Path, layer: &LayerDescriptor, connection: &FuseConnection) {
        let meta = MountMeta {
            layer: layer.digest.to_string(),
            init: base64::engine::general_purpose::STANDARD.encode(connection.init_request()),
        };
        let meta = match serde_json::to_string(&meta) {
            Ok(meta) => meta,
            Err(err) => {
                warn!(error = %err, "cannot describe the mount to the keeper");
                return;
            }
        };
        let key = mountpoint.to_string_lossy();
        if let Err(err) = self.call(|client| client.keep(&key, &meta, connection.device())) {
            warn!(
                mountpoint = %mountpoint.display(),
                error = %skiff_types::error_chain(&err),
                "the keeper does not hold this mount: it ends with skiffd"
            );
        }
    }

    fn forget(&self, mountpoint: &Path) {
        let key = mountpoint.to_string_lossy();
        if let Err(err) = self.call(|client| client.forget(&key)) {
            warn!(mountpoint = %mountpoint.display(), error = %skiff_types::error_chain(&err), "keeper");
        }
    }
}
