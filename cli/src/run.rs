//! `skiff run`: pull the image if it is not there (as nerdctl does), create the container, start its task
//! attached (or detached with `-d`), and with `--rm` remove task, container and snapshot afterwards.

use anyhow::Context;
use clap::Args;
use skiff_api::v1::{self, containers_client::ContainersClient, images_client::ImagesClient};

use crate::containers::ContainerFlags;
use crate::{images, output, tasks, Ctx};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Detach: leave the container running and print its id and pid.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container (and its task and snapshot) when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Forward this command's stdin to the container.
    #[arg(short, long)]
    pub interactive: bool,
    /// Pull over plain HTTP when the image is not there yet.
    #[arg(long)]
    pub plain_http: bool,
    #[command(flatten)]
    pub flags: ContainerFlags,
    /// The image reference (pulled when missing).
    pub image: String,
    /// The container id.
    pub id: String,
    /// The command and its arguments, replacing the image's CMD.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<()> {
    if args.rm && args.detach {
        anyhow::bail!("--rm and --detach cannot be combined");
    }
    let mut images_client = ImagesClient::new(ctx.channel.clone());
    let present = images_client
        .get(v1::GetImageRequest {
            namespace: ctx.namespace.clone(),
            name: args.image.clone(),
        })
        .await;
    match present {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::NotFound => {
            images::pull(
                &mut images_client,
                ctx.namespace.clone(),
                args.image.clone(),
                args.plain_http,
                None,
            )
            .await?;
        }
        Err(status) => {
            return Err(output::status(status)).with_context(|| format!("image {}", args.image))
        }
    }
    let mut containers = ContainersClient::new(ctx.channel.clone());
    containers
        .create(
            args.flags
                .request(&ctx.namespace, &args.image, &args.id, args.args.clone()),
        )
        .await
        .map_err(output::status)
        .with_context(|| format!("create container {}", args.id))?;
    let started = tasks::start(
        ctx,
        &args.id,
        args.detach,
        args.interactive || args.flags.tty,
    )
    .await;
    if args.rm {
        let removed = containers
            .delete(v1::DeleteContainerRequest {
                namespace: ctx.namespace.clone(),
                id: args.id.clone(),
            })
            .await;
        if let Err(status) = removed {
            // The run's own outcome matters more; say why the container stays.
            eprintln!(
                "skiff: container {} was not removed: {}",
                args.id,
                status.message()
            );
        }
    }
    started
}
