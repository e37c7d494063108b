//! ipc-floor: what one request/answer round trip between two processes
//! costs on this machine, per transport, each against a native system call
//! measured in the same round (`ipc_floor.c`): a SOCK_SEQPACKET pair (the
//! keeper's transport before), pipes, eventfds, a futex word in shared
//! memory with and without a bounded spin first (the keeper's transport
//! now). These are the floors of `uapi-bar:preload-keeper`;
//! docs/DESIGN.md §5, "The transport".

use super::trapfloor::{floor_rows, FloorProgram};
use super::{Ctx, Outcome, PlotData};

const SOURCE: &str = include_str!("ipc_floor.c");

const KINDS: &[(&str, &str)] = &[
    ("seqpacket", "64-byte record each way over SOCK_SEQPACKET"),
    ("pipe", "one byte each way over two pipes"),
    ("eventfd", "an eventfd each way"),
    ("futex", "a shared-memory word, both sides in FUTEX_WAIT"),
    (
        "spin-futex",
        "a shared-memory word, each side spinning up to 5 us before FUTEX_WAIT",
    ),
];

pub fn ipc_floor(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    floor_rows(
        ctx,
        &FloorProgram {
            name: "ipc-floor",
            program: "ipc_floor",
            source: SOURCE,
            iters: 3000,
            kinds: KINDS,
            unavailable: "a transport unavailable here",
        },
    )
}
