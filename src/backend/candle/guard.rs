//! Other crates' code that panics on hostile input — candle's GGUF reader divides by a zero
//! `general.alignment`, a tokenizer's regex engine panics at its retry limit on a backtracking
//! pattern — run so that a panic becomes an error naming the file, and the panic's own message
//! (which would look like a crash of icl-eval) is not printed.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`no_panic`], whose panics are reported as errors instead.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Runs `f`; a panic inside it becomes an error `what` names, with the panic's message.
pub fn no_panic<T>(what: impl std::fmt::Display, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    // One hook for the process, installed once: silent for guarded threads, the previous hook
    // (the default message) for every other panic.
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info)
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        anyhow::anyhow!("{what}: {msg}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_values_pass_through() {
        assert_eq!(no_panic("x", || 7).unwrap(), 7);
        let zero = std::hint::black_box(0u64);
        let e = no_panic("reading f.gguf", || 1 / zero)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("reading f.gguf: ") && e.contains("divide by zero"),
            "{e}"
        );
    }
}
