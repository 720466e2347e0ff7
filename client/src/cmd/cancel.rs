//! `cancel`: stop a running download job (the PServer drops its partial
//! file).

use peerdex_proto::rest::JobState;

use super::Ctx;
use crate::cli::CancelArgs;
use crate::output::outln;
use crate::progress::state_word;

pub(super) async fn run(ctx: &Ctx, args: CancelArgs) -> anyhow::Result<()> {
    let job = ctx.api.cancel(&args.job).await?;
    if ctx.json {
        return ctx.print_json(&job);
    }
    match job.state {
        JobState::Cancelled => outln!("cancelled job {}", job.job_id),
        s if s.is_final() => outln!("job {} had already ended ({})", job.job_id, state_word(s)),
        s => outln!(
            "asked job {} to stop; it is still {}",
            job.job_id,
            state_word(s)
        ),
    }
    Ok(())
}
