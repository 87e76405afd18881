//! Leader terms, and the fencing rule that keeps a deposed master from acting.
//!
//! Several masters may run, one of them leading under a lease whose **term** only grows (a new
//! leader always has a higher term than every earlier one). A master's term is fixed for the life
//! of its leadership, and every command it sends carries it: launches and kills to agents
//! ([`crate::LaunchRequest::term`], [`crate::KillRequest::term`]), its replies to registrations
//! and heartbeats ([`crate::RegisterReply::term`], [`crate::HeartbeatReply::term`]; a registration
//! reply can order kills), and the shard maps and admin requests of the store's coordinator
//! ([`crate::store::ShardMap::term`]; the admin requests are `shoal_store::wire`'s).
//!
//! **The rule.** A process that obeys the master (an agent, a store node) keeps the highest term
//! it has seen, on disk, so it survives a restart. A command of a lower term is refused — nothing
//! is done, and the reply says why ([`StaleTerm`]); a command of an equal or higher term is obeyed,
//! and a higher term becomes the new highest before anything is done. So once any process has
//! heard from a new leader, nothing an older leader sends takes effect there, whenever it arrives.
//!
//! What is *not* fenced: what processes send the master (registrations, heartbeats, status
//! updates: they go to whoever leads), task log reads, and the store's data plane (clients'
//! reads and writes, ordered by the shard map they were routed by, not by a term).

/// A command of a leader older than one this process has already obeyed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale term {term}: this {holder} has seen term {highest}")]
pub struct StaleTerm {
    /// The command's term.
    pub term: u64,
    /// The highest term the refusing process has seen.
    pub highest: u64,
    /// Who refused (`agent`, `store node`), for the message.
    pub holder: &'static str,
}

/// The rule for a command of `term` at a process (`holder`) whose highest term seen is `highest`:
/// refused when lower; otherwise obeyed, and `Ok(true)` when `term` is a new highest, which the
/// process must record (durably) before it acts.
pub fn admit(term: u64, highest: u64, holder: &'static str) -> Result<bool, StaleTerm> {
    if term < highest { Err(StaleTerm { term, highest, holder }) } else { Ok(term > highest) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_terms_are_refused_equal_ones_obeyed_higher_ones_raise() {
        let err = admit(3, 5, "agent").expect_err("a lower term");
        assert_eq!(err.to_string(), "stale term 3: this agent has seen term 5");
        assert_eq!(admit(5, 5, "agent"), Ok(false));
        assert_eq!(admit(6, 5, "agent"), Ok(true));
        assert_eq!(admit(1, 0, "store node"), Ok(true));
    }
}
