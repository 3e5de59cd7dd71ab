/// (placeholder until this command is implemented)
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`evaluate` is not implemented yet")
}
