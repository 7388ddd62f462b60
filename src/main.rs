//! `hema3n-edge`: the appliance daemon and its administration CLI. Parses the command line and
//! hands it to [`hema3n_edge::cli::main`], which loads the config, starts logging and
//! dispatches (`run` starts the supervisor, `hema3n_edge::app`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    hema3n_edge::cli::main(hema3n_edge::cli::Args::parse())
}
