//! `skiff content ls|info|fetch`.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use skiff_api::v1::{self, content_client::ContentClient};
use tokio_stream::StreamExt;

use crate::output;
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum ContentCommand {
    /// List the blobs this namespace references.
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the digests.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a blob's size, age and labels.
    Info { digest: String },
    /// Write a blob's bytes to stdout (`skiff content fetch D | sha256sum` prints D's hex).
    Fetch { digest: String },
}

pub async fn run(ctx: &Ctx, command: ContentCommand) -> anyhow::Result<()> {
    let mut client = ContentClient::new(ctx.channel.clone());
    let namespace = ctx.namespace.clone();
    match command {
        ContentCommand::Ls { quiet } => {
            let blobs = client
                .list(v1::ListContentRequest { namespace })
                .await
                .map_err(output::status)
                .context("list content")?
                .into_inner()
                .blobs;
            output::listing(
                &blobs,
                quiet,
                |b| &b.digest,
                &["DIGEST", "SIZE", "AGE", "LABELS"],
                |b| {
                    vec![
                        b.digest.clone(),
                        output::size(b.size),
                        output::age(b.created_at.as_ref()),
                        output::labels(&b.labels),
                    ]
                },
            )
        }
        ContentCommand::Info { digest } => {
            let info = client
                .info(v1::ContentInfoRequest {
                    namespace,
                    digest: digest.clone(),
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("content info {digest}"))?
                .into_inner();
            println!("Digest:  {}", info.digest);
            println!("Size:    {} ({} bytes)", output::size(info.size), info.size);
            println!("Age:     {}", output::age(info.created_at.as_ref()));
            println!("Labels:  {}", output::labels(&info.labels));
            Ok(())
        }
        ContentCommand::Fetch { digest } => {
            let mut stream = client
                .read(v1::ReadContentRequest {
                    namespace,
                    digest: digest.clone(),
                    offset: 0,
                    size: 0,
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("fetch {digest}"))?
                .into_inner();
            let mut stdout = std::io::stdout().lock();
            while let Some(message) = stream.next().await {
                let message = message
                    .map_err(output::status)
                    .with_context(|| format!("fetch {digest}"))?;
                stdout.write_all(&message.data).context("write to stdout")?;
            }
            stdout.flush().context("write to stdout")
        }
    }
}
