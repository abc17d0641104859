//! (being written)
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}
pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    Ok(())
}
