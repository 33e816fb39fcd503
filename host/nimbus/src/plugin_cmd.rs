//! `nimbus plugin …` (owned by the plugin platform work).

#[derive(clap::Args)]
pub struct PluginArgs {}

pub async fn run(_args: PluginArgs) -> anyhow::Result<()> {
    anyhow::bail!("the plugin store is not part of this build yet")
}
