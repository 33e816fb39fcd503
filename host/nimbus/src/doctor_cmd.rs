//! `nimbus doctor` (owned by the runtime work).

#[derive(clap::Args)]
pub struct DoctorArgs {}

pub async fn run(_args: DoctorArgs) -> anyhow::Result<()> {
    anyhow::bail!("host checks are not part of this build yet")
}
