//! `chat-load` command line: parse, run, print the summary, set the exit
//! code (0 all checks passed, 1 a check failed, 2 the run could not be set
//! up). Everything else lives in the library.

#![forbid(unsafe_code)]

use chat_load::cli::Cli;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = cli.common.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(chat_load::run(cli));
    // Connection tasks still winding down must not keep the process up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(report) => {
            print!("{}", report.table());
            if let Err(e) = chat_load::write_outputs(&report, &common) {
                eprintln!("chat-load: {e}");
                return ExitCode::from(2);
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("chat-load: {e}");
            ExitCode::from(2)
        }
    }
}
