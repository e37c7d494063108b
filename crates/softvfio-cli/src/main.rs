//! `softvfio`: run VFIO programs on a software IOMMU, demonstrate it,
//! inspect a running session, measure it.

// Unsafe code is denied except in the modules below that say why they
// need it (each block with its SAFETY argument).
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// `bench::sys` and `demo::sys` hold their unsafe code; each module allows
// it there (and for taking this process's memory, statement by statement).
mod bench;
mod demo;
mod inspect;
mod report;
// Signal dispositions of the supervisor (`libc::signal`).
#[allow(unsafe_code)]
mod run;
mod run_mmio;
mod stack_window;

#[derive(Parser)]
#[command(
    name = "softvfio",
    version,
    about = "The Linux VFIO type1 IOMMU backend in user space"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Map guest-like memory on the built-in platform, run DMA through the
    /// edu device, and show mappings, the IOVA list, pins, accounting and
    /// timings.
    Demo(demo::DemoArgs),
    /// Run PROGRAM with /dev/vfio served by softvfio (static binaries too);
    /// print the DMA fault log and a leak report when it ends.
    Run(run::RunArgs),
    /// Show the state of a running `softvfio run` session.
    Inspect(inspect::InspectArgs),
    /// Run benchmarks, each against a baseline measured in the same run
    /// (`softvfio bench list` names them).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Demo(a) => demo::main(a),
        Command::Run(a) => run::main(a),
        Command::Inspect(a) => inspect::main(a),
        Command::Bench(a) => bench::main(a),
    };
    ExitCode::from(code)
}
