//! `skiff namespace ls|create|rm`.

use anyhow::Context;
use clap::Subcommand;
use skiff_api::v1::{self, namespaces_client::NamespacesClient};

use crate::output;
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum NamespaceCommand {
    /// List namespaces and their labels.
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create a namespace.
    Create {
        name: String,
        /// A label to set, KEY=VALUE; may be repeated.
        #[arg(long = "label", value_parser = output::key_value)]
        labels: Vec<(String, String)>,
    },
    /// Remove namespaces; a namespace that still holds images or content is refused.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(ctx: &Ctx, command: NamespaceCommand) -> anyhow::Result<()> {
    let mut client = NamespacesClient::new(ctx.channel.clone());
    match command {
        NamespaceCommand::Ls { quiet } => {
            let namespaces = client
                .list(v1::ListNamespacesRequest {})
                .await
                .map_err(output::status)
                .context("list namespaces")?
                .into_inner()
                .namespaces;
            output::listing(
                &namespaces,
                quiet,
                |ns| &ns.name,
                &["NAME", "LABELS"],
                |ns| vec![ns.name.clone(), output::labels(&ns.labels)],
            )
        }
        NamespaceCommand::Create { name, labels } => {
            client
                .create(v1::CreateNamespaceRequest {
                    name: name.clone(),
                    labels: labels.into_iter().collect(),
                })
                .await
                .map_err(output::status)
                .with_context(|| format!("create namespace {name}"))?;
            Ok(())
        }
        NamespaceCommand::Rm { names } => {
            for name in names {
                client
                    .remove(v1::RemoveNamespaceRequest { name: name.clone() })
                    .await
                    .map_err(output::status)
                    .with_context(|| format!("remove namespace {name}"))?;
                println!("{name}");
            }
            Ok(())
        }
    }
}
