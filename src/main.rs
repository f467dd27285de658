//! The `icl-eval` binary: parse the command line, call the library, print a one-line error on failure.

mod cli;

use clap::Parser;

/// candle allocates a fresh buffer for every tensor op. By default glibc serves the large ones with
/// mmap and gives them back on free, so every op faults in and zeroes new pages: a third of a
/// long-prompt run's time here (docs/performance.md). Keeping buffers up to 32 MiB in the heap, and
/// not trimming it, reuses them instead. Results do not change.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_buffers() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_buffers() {}

fn main() {
    keep_freed_buffers();
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            // clap's first line names the flag and the problem; the usage block after it is noise here.
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            // Keep the list of accepted values when clap gives one.
            let values = rendered
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("[possible values:"))
                .map(|l| format!(" {l}"))
                .unwrap_or_default();
            eprintln!("{first}{values} (see `icl-eval --help`)");
            std::process::exit(2);
        }
    };
    if let Err(e) = cli::dispatch(args) {
        if let Some(stopped) = e.downcast_ref::<icl_eval::run::Interrupted>() {
            eprintln!("{stopped}");
            std::process::exit(130);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
