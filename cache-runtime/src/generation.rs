//! Generations a lookup *proposes*: the built-in Redis backends read a missing group generation
//! (a key's tombstone never moved yet, a group never invalidated, or one that was evicted) as a
//! random value flagged [`PROPOSED`], without writing it; the store of a value computed under it
//! creates it (`SET NX`, in the same round trip as the value), and the value records it without
//! the flag. A miss on a new key then costs a read and a write, as with no generations at all.
//!
//! If another caller created the generation first (another value's store, an invalidation), the
//! value recorded the proposal, which is not the generation: a miss when read, never a hit. Two
//! processes' first misses of one key may so cost one extra miss; two calls in one process join
//! one computation ([`joinable`]).
//!
//! Not covered: another process's invalidation that creates the generation while a computation
//! runs under a proposal, followed by the generation's eviction before a second call's lookup in
//! this process: the second call joins the computation, whose value predates the invalidation
//! (the value stored is still a miss). With the lookup creating the generation the second call
//! would have made a new one, and run its own computation. It takes an eviction of a key written
//! moments before.

/// The flag of a proposed generation (never set in a generation a backend holds: Redis moves
/// them with `INCR`, below `i64::MAX`).
pub(crate) const PROPOSED: u64 = 1 << 63;

/// `generation` proposed for a group that has none.
pub(crate) fn propose(generation: u64) -> u64 {
    generation | PROPOSED
}

/// Whether a lookup proposed `generation` (the group had none).
pub(crate) fn is_proposed(generation: u64) -> bool {
    generation & PROPOSED != 0
}

/// What a value records for `generation`: the generation itself, a proposal without its flag.
pub(crate) fn recorded(generation: u64) -> u64 {
    generation & !PROPOSED
}

/// `generation` as computations started under it are told apart: every proposal alike (each
/// lookup that made one found the group missing), so that concurrent first misses of a key join
/// one computation.
pub(crate) fn joinable(generation: u64) -> u64 {
    if is_proposed(generation) {
        PROPOSED
    } else {
        generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposal_is_recorded_without_its_flag() {
        let proposed = propose(12_345);
        assert!(is_proposed(proposed));
        assert!(!is_proposed(12_345));
        assert_eq!(recorded(proposed), 12_345);
        assert_eq!(recorded(12_345), 12_345);
    }

    #[test]
    fn every_proposal_joins_alike_a_created_generation_apart() {
        assert_eq!(joinable(propose(1)), joinable(propose(2)));
        assert_ne!(joinable(propose(1)), joinable(1));
        assert_eq!(joinable(7), 7);
    }
}
