//! `sandpit bench`: placeholder until the harness lands.

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
