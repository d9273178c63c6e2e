//! `skiff container create|ls|info|rm`: containers are metadata (image, rootfs snapshot, OCI spec);
//! `skiff task` runs them.

use anyhow::Context;
use clap::{Args, Subcommand};
use skiff_api::v1::{self, containers_client::ContainersClient};

use crate::output;
use crate::Ctx;

/// The flags that shape a container, shared by `container create` and `run`. skiffd validates every
/// value and names the flag when one is wrong.
#[derive(Args, Debug, Clone, Default)]
pub struct ContainerFlags {
    /// Set an environment variable, KEY=VALUE; may be repeated.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Add a mount: type=bind,src=HOST_PATH,dst=CONTAINER_PATH,options=rbind:ro (or type=tmpfs,dst=…).
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// Memory limit, e.g. 128m, 1g.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Largest number of processes.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Hostname (default: the container id).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// User, NAME|UID[:GROUP|GID], looked up in the image (default: the image's user).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// OCI runtime binary, a name on skiffd's PATH or a path (default: runc).
    #[arg(long)]
    pub runtime: Option<String>,
    /// Allocate a TTY for the container's process.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// An OCI hook, STAGE=PATH[,ARG...] (prestart, createRuntime, createContainer, startContainer,
    /// poststart, poststop); may be repeated.
    #[arg(long = "hook")]
    pub hooks: Vec<String>,
    /// A label to set, KEY=VALUE; may be repeated.
    #[arg(long = "label", value_parser = output::key_value)]
    pub labels: Vec<(String, String)>,
}

impl ContainerFlags {
    /// The create request for container `id` of `image` running `args` (empty: the image's command).
    pub fn request(
        &self,
        namespace: &str,
        image: &str,
        id: &str,
        args: Vec<String>,
    ) -> v1::CreateContainerRequest {
        v1::CreateContainerRequest {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            image: image.to_owned(),
            runtime: self.runtime.clone().unwrap_or_default(),
            labels: self.labels.iter().cloned().collect(),
            options: Some(v1::ContainerOptions {
                args,
                env: self.env.clone(),
                user: self.user.clone().unwrap_or_default(),
                hostname: self.hostname.clone().unwrap_or_default(),
                mounts: self.mounts.clone(),
                memory: self.memory.clone().unwrap_or_default(),
                cpus: self.cpus.clone().unwrap_or_default(),
                pids_limit: self.pids_limit.unwrap_or(0),
                read_only: self.read_only,
                tty: self.tty,
                hooks: self.hooks.clone(),
            }),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Create a container of a pulled image (no process runs until `skiff task start`).
    Create {
        #[command(flatten)]
        flags: Box<ContainerFlags>,
        /// The image, as `skiff image ls` names it.
        image: String,
        /// The container id: letters, digits and single '.', '_' or '-' between them.
        id: String,
        /// The command and its arguments, replacing the image's CMD (its ENTRYPOINT stays).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List containers.
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print a container as JSON, with its OCI runtime spec.
    Info { id: String },
    /// Replace a container's labels (none given: remove them all).
    Label {
        id: String,
        /// KEY=VALUE; may be repeated.
        #[arg(value_parser = output::key_value)]
        labels: Vec<(String, String)>,
    },
    /// Remove containers and their rootfs snapshots.
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub async fn run(ctx: &Ctx, command: ContainerCommand) -> anyhow::Result<()> {
    let mut client = ContainersClient::new(ctx.channel.clone());
    match command {
        ContainerCommand::Create {
            flags,
            image,
            id,
            args,
        } => {
            client
                .create(flags.request(&ctx.namespace, &image, &id, args))
                .await
                .map_err(output::status)
                .with_context(|| format!("create container {id}"))?;
            Ok(())
        }
        ContainerCommand::Ls { quiet } => {
            let containers = client
                .list(v1::ListContainersRequest {
                    namespace: ctx.namespace.clone(),
                })
                .await
                .map_err(output::status)
                .context("list containers")?
                .into_inner()
                .containers;
            output::listing(
                &containers,
                quiet,
                |c| &c.id,
                &["CONTAINER", "IMAGE", "RUNTIME"],
                |c| vec![c.id.clone(), c.image.clone(), c.runtime.clone()],
            )
        }
        ContainerCommand::Info { id } => {
            let container = client
                .get(v1::GetContainerRequest {
                    namespace: ctx.namespace.clone(),
                    id: id.clone(),
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("container {id}"))?
                .into_inner();
            let spec: serde_json::Value = serde_json::from_slice(&container.spec)
                .context("the daemon sent a spec that is not JSON")?;
            let mut labels: Vec<_> = container.labels.into_iter().collect();
            labels.sort();
            let info = serde_json::json!({
                "ID": container.id,
                "Image": container.image,
                "SnapshotKey": container.snapshot_key,
                "Runtime": container.runtime,
                "Labels": labels
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect::<serde_json::Map<_, _>>(),
                "CreatedAt": container.created_at.map(|t| t.to_string()),
                "Spec": spec,
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        ContainerCommand::Label { id, labels } => {
            let updated = client
                .update(v1::UpdateContainerRequest {
                    namespace: ctx.namespace.clone(),
                    id: id.clone(),
                    labels: labels.into_iter().collect(),
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("label container {id}"))?
                .into_inner();
            println!("{}", output::labels(&updated.labels));
            Ok(())
        }
        ContainerCommand::Rm { ids } => {
            for id in ids {
                client
                    .delete(v1::DeleteContainerRequest {
                        namespace: ctx.namespace.clone(),
                        id: id.clone(),
                    })
                    .await
                    .map_err(output::status)
                    .with_context(|| format!("remove container {id}"))?;
                println!("{id}");
            }
            Ok(())
        }
    }
}
