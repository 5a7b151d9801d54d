//! Overlapping the cache misses of consecutive commands.
//!
//! With a million agents a decision is a chain of dependent misses: the tenant's index slot,
//! the tenant, its agent index slot, the agent; beside them the answer index slot and the
//! tenant's limits. Applied one after the other, each command waits for each link in turn.
//! The commands of a log entry are known before they are applied, so while one command is
//! applied the next ones are prefetched, each one link further along its chain: the command
//! `PREFETCH_DEPTH - 1` ahead has its first link requested, the next one its last, with
//! `SPACING` commands between stages. Every link then arrives while other work runs, and
//! the command finds its lines in the cache.
//!
//! Prefetching reads only lines an earlier stage has requested, takes unconfirmed guesses
//! (the first slot whose hash matches), and changes nothing: a wrong guess costs a wasted
//! line, never a wrong answer.

use super::{Command, Ledger};
use tollgate_cacheline::prefetch;

/// Links of the longest chain, one stage each.
const STAGES: usize = 4;
/// Commands applied between two stages of one command: the time a line has to arrive. One
/// is enough, since a command takes longer than a miss; retune with the ledger bench
/// (`cargo bench -p tollgate-ledger --bench ledger`, its prefetching ratio).
const SPACING: usize = 1;
/// How many commands ahead `prefetch_upcoming` looks.
pub const PREFETCH_DEPTH: usize = (STAGES - 1) * SPACING + 1;

impl Ledger {
    /// Call before applying a command, with the commands that follow it (the rest of the
    /// batch): starts loading what the next `PREFETCH_DEPTH` of them will read. The next
    /// command gets its last stage, the one `SPACING` further its stage before, and so on.
    ///
    /// The last stage goes first: one call requests some twenty lines, more than the CPU
    /// keeps misses in flight, so the requests at the end of a call wait for earlier ones to
    /// arrive, and what the next command needs must not be the one waiting.
    pub fn prefetch_upcoming(&self, upcoming: &[Command]) {
        for stage in (0..STAGES).rev() {
            let ahead = (STAGES - 1 - stage) * SPACING;
            if let Some(cmd) = upcoming.get(ahead) {
                self.prefetch_stage(cmd, stage);
            }
        }
    }

    /// Stage 0 requests the first link of `cmd`'s chain; stage `s` reads what stage `s - 1`
    /// requested and requests the next link.
    fn prefetch_stage(&self, cmd: &Command, stage: usize) {
        let Some(tenant_id) = cmd.tenant() else {
            return;
        };
        // The later stages follow the agent: commands without one have none.
        let agent_id = match cmd {
            Command::Reserve { agent, .. } | Command::Record { agent, .. } => Some(agent),
            _ => None,
        };
        if stage >= 2 && agent_id.is_none() {
            return;
        }
        let tenant_hash = self.tenants.hash(tenant_id.as_bytes());
        if stage == 0 {
            self.tenants.prefetch_slot(tenant_hash);
            return;
        }
        let Some(index) = self.tenants.likely_index(tenant_hash) else {
            return;
        };
        let Some(tenant) = self.tenants.get(index) else {
            return;
        };
        if stage == 1 {
            prefetch(tenant);
            if let Some(request_id) = cmd.request_id() {
                self.answers.prefetch(index, request_id.as_bytes());
            }
            return;
        }
        let Some(agent_id) = agent_id else {
            return;
        };
        let agent_hash = tenant.agents.hash(agent_id.as_bytes());
        if stage == 2 {
            tenant.agents.prefetch_slot(agent_hash);
            prefetch(tenant.limits.as_slice());
        } else {
            tenant.agents.prefetch_likely(agent_hash);
        }
    }
}
