//! The `icl-eval` binary: parse the command line, call the library, print a one-line error on failure.

mod cli;

use clap::Parser;

fn main() {
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
