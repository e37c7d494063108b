//! Peer-to-peer DMA through the uAPI, both modes (docs/MMIO.md, "Peer to
//! peer"): on the I/OAT platform, edu's mmap'd BAR0 and the I/OAT BAR0 are
//! mapped for DMA next to memory in one type1 container; the I/OAT engine
//! copies between memory and edu's registers, edu DMA-es to and from the
//! I/OAT registers and into its own BAR, and what a BAR gives after
//! `munmap` and with memory decoding off.

mod common;

use std::path::Path;

use common::{build_c, softvfio_run};

#[test]
fn dma_reaches_the_peer_registers() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/platforms/ioat.toml");
    let cfg = cfg.to_str().expect("utf-8 path");
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let exe = build_c("p2p_ioat_edu", static_);
        let out = softvfio_run(mode, &["--config", cfg], &exe, &[]);
        assert_eq!(out.code, Some(0), "{mode}:\n{}\n{}", out.stdout, out.stderr);
        // Edu's registers through the I/OAT engine: liveness gives the
        // complement, the factorial is computed, the 64-bit DMA source
        // register takes one 8-byte write; an 8-byte read below 0x80 gives
        // all ones (edu's rule), a misaligned 8-byte copy is a 2-, a 4- and
        // a 2-byte read (edu gives 0 for 2-byte reads). The I/OAT
        // registers through edu's DMA: CHANCNT 1, XFERCAP 16, VER 0x33,
        // PERPORTOFFSET 0x80; INTRDELAY written. Edu's write into its own
        // BAR lands (posted); its read of its own BAR is a completer abort
        // (a DMA fault, zeros in its buffer). After munmap the IOMMU still
        // reaches the BAR, as on Linux; with memory decoding off the
        // engine's write fails (CHANERR write error).
        let want = "\
map_memory 0
map_edu_bar 0
map_ioat_bar 0
to_liveness DONE read=0xedcba987
to_factorial DONE read=120
to_dma_src DONE read=0xabcdef00
from_ident DONE bytes ed000001
from_ident_8 DONE bytes ffffffffffffffff
from_dma_regs DONE bytes 00efcdab000000003412000000000000
from_liveness_misaligned DONE bytes 000087a9cbed0000
edu_reads_ioat cmd=0,0x2 bytes 01100000000000003300800000000000
edu_writes_ioat cmd=0,0x2 intrdelay=0x123
edu_writes_itself cmd=0x2 liveness=0xff3f0011
edu_reads_itself cmd=0,0x2 bytes 00000000
munmap_edu 0
after_munmap DONE read=0xeeeeeeee
decoding_off HALTED chanerr=0x200
decoding_on DONE
unmap_edu_bar 0
unmap_ioat_bar 0
unmap_memory 0
done
";
        assert_eq!(out.stdout, want, "{mode}: {}", out.stderr);
        assert!(
            out.stderr.contains(
                "DMA faults: 2\n  #0    0000:00:03.0 read iova 0x4000000: MemoryError\n  \
                 #1    0000:00:04.0 write iova 0x4000004: MemoryError\n"
            ),
            "{mode}: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("after release: 0 pinned pages, 0 accounted pages: no leak"),
            "{mode}: {}",
            out.stderr
        );
    }
}
