//! Per-thread reusable codec state.
//!
//! Each codec keeps its library contexts in a thread-local slot, so a codec
//! instance can be shared (`Send + Sync`) while every worker thread reuses
//! its own contexts instead of allocating them per cluster.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Runs `f` with this thread's state from `slot`.
///
/// A re-entrant call (the slot is already borrowed) or a call during thread
/// teardown (the slot is gone) gets a fresh temporary state instead of
/// failing: slower, but always correct.
pub(crate) fn with_thread_state<S: Default, R>(
    slot: &'static LocalKey<RefCell<S>>,
    f: impl FnOnce(&mut S) -> R,
) -> R {
    let mut f = Some(f);
    let mut out = None;
    // An error here only means the slot is being destroyed; fall through.
    let _ = slot.try_with(|cell| {
        if let Ok(mut state) = cell.try_borrow_mut() {
            out = f.take().map(|f| f(&mut state));
        }
    });
    match (out, f) {
        (Some(r), _) => r,
        (None, Some(f)) => f(&mut S::default()),
        (None, None) => unreachable!("the closure runs exactly once"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SLOT: RefCell<Vec<u32>> = RefCell::default();
    }

    #[test]
    fn state_persists_per_thread_and_reentry_gets_a_temporary() {
        with_thread_state(&SLOT, |v| v.push(1));
        let inner_len = with_thread_state(&SLOT, |outer| {
            outer.push(2);
            // Re-entered while borrowed: a fresh, empty state.
            with_thread_state(&SLOT, |inner| inner.len())
        });
        assert_eq!(inner_len, 0);
        assert_eq!(with_thread_state(&SLOT, |v| v.clone()), [1, 2]);
        let other = std::thread::spawn(|| with_thread_state(&SLOT, |v| v.len()));
        assert_eq!(other.join().unwrap(), 0);
    }
}
