//! stub
/// Hold args.
#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {}
/// Run hold.
pub fn run_hold(_a: HoldArgs) -> Result<crate::HoldReport, crate::LoadError> { todo!() }
