#!/usr/bin/env python3
"""Classifies every line where a medu walk under softvfio differs from Linux's.

usage: tests-oracle/medu_diffs.py MODE SEED SOFTVFIO_OUTPUT [-v]
  MODE is pin or rw (the recording tests-oracle/medu-6.1-MODE-seedSEED.txt);
  SOFTVFIO_OUTPUT is what `softvfio run --config tests-oracle/medu-platform.toml
  -- medu_walk /dev/vfio/10 UUID SEED 300` printed. Prints one count per cause
  (the causes of tests-oracle/MEDU-DIFFS.md), and with -v every line.

The walk asks the same questions in both runs, so lines pair up one to one.
To know what a DMA hit, the script replays the kernel's answers: the maps
Linux accepted, the unmaps it did (type1 v2: whole mappings inside the
range), unmap-all; a DMA line is then classified by the permission of the
mappings under the pages it touches.
"""
import re
import sys
from collections import Counter

PAGE = 0x1000
DMA_MASK = (1 << 28) - 1
SCRATCH = 0xFF00000

CAUSES = {
    "A": "VADDR unmap: EBUSY before any other check (vfio_dma_do_unmap)",
    "B": "device write to a write-only mapping lands (medu pins READ|WRITE; vfio_dma_rw wants READ)",
    "B+": "carried from B: pages pinned for those writes (VmLck, dirty bitmap), memory they wrote",
    "C": "failed device read zero-fills the device buffer (medu leaves it untouched)",
    "C+": "carried from C: the device buffer already differed",
    "D": "unmap of a mapping that ends at 2^64: Linux finds none (vfio_find_dma's start + size wraps)",
    "D+": "carried from D: one more mapping left in Linux (DMA_AVAIL)",
    "E": "device write through an RW mapping of read-only user memory lands",
    "M": "dma_rw mode not selectable: softvfio ran the pin cache (VmLck, dirty bits, reads of RO memory)",
    "?": "unclassified",
}


def fields(line):
    return dict(re.findall(r"(\w+)=(\S+)", line))


class Model:
    """The IOVA space as Linux's answers leave it."""

    def __init__(self):
        self.maps = {}  # iova -> (size, prot)

    def apply(self, line):
        if " -> ok" not in line:
            return
        f = fields(line.split(" -> ")[0])
        parts = line.split()
        op = parts[1]
        if op == "map-scratch":
            self.maps[SCRATCH] = (PAGE, "RW")
        elif op == "map":
            # what the device can do there: the mapping's permission, less
            # what the user memory behind it refuses (pins of PROT_NONE
            # memory fail; write pins of read-only memory fail)
            prot = parts[3]
            if parts[2] == "none-memory":
                prot = "none"
            elif parts[2] == "ro-memory":
                prot = "ro-" + prot
            self.maps[int(f["iova"], 16)] = (int(f["size"], 16), prot)
        elif op.startswith("unmap-all"):
            self.maps.clear()
        elif op.startswith("unmap"):
            lo = int(f["iova"], 16)
            hi = lo + int(f["size"], 16)
            for iova, (size, _) in list(self.maps.items()):
                if iova >= lo and iova + size <= hi:
                    del self.maps[iova]

    def prot(self, addr):
        for iova, (size, prot) in self.maps.items():
            if iova <= addr < iova + size:
                return prot
        return "-"

    def pages(self, line):
        f = fields(line.split(" -> ")[0])
        start = int(f["iova"], 16) & DMA_MASK
        cnt = int(f["cnt"])
        return [self.prot(p) for p in range(start & ~(PAGE - 1), start + cnt, PAGE)]


def answer(line):
    return line.split(" -> ", 1)[1] if " -> " in line else line.split(" ", 2)[-1]


def classify(mode, k, o, model, buffer_differs, memory_differs, top_mapping_kept):
    op = k.split()[1] if len(k.split()) > 1 else ""
    if op == "unmap" and "iova=0xfffffffffffff000 " in k and "unmapped=0" in answer(k).split():
        return "D"
    if op == "get-info" and "avail=" in k and top_mapping_kept:
        return "D+"
    if op == "vaddr-invalidate" and answer(k) == "EBUSY":
        return "A"
    if op == "vmlck" or (op in ("dirty-get", "unmap+dirty", "unmap") and "bitmap=" in k):
        return "M" if mode == "rw" else "B+"
    if op == "dma-write":
        prots = model.pages(k)
        kc = int(fields(answer(k))["changed"])
        oc = int(fields(answer(o))["changed"])
        if oc > kc and "W" in prots:
            return "B"
        if oc > kc and any(p.startswith("ro-") and "W" in p for p in prots):
            return "E"
        if buffer_differs:
            return "C+"
        if memory_differs:
            return "B+"
    if op == "dma-read":
        prots = model.pages(k)
        # vfio_dma_rw reads read-only user memory behind an RW mapping; a
        # pin of it cannot (the pin asks for the mapping's write access)
        if mode == "rw" and any(p.startswith("ro-") and "W" in p for p in prots):
            return "M"
        if any(p not in ("R", "RW", "ro-R", "ro-RW") for p in prots):
            return "C"
        if buffer_differs:
            return "C+"
    return "?"


def main():
    mode, seed, ours_path = sys.argv[1], sys.argv[2], sys.argv[3]
    verbose = "-v" in sys.argv[4:]
    here = __file__.rsplit("/", 1)[0]
    linux = open(f"{here}/medu-6.1-{mode}-seed{seed}.txt").read().splitlines()
    ours = open(ours_path).read().splitlines()
    if len(linux) != len(ours):
        sys.exit(f"line counts differ: linux {len(linux)}, softvfio {len(ours)}")
    model = Model()
    counts = Counter()
    buffer_differs = False
    memory_differs = False
    top_mapping_kept = False
    for k, o in zip(linux, ours):
        if k != o:
            cause = classify(mode, k, o, model, buffer_differs, memory_differs, top_mapping_kept)
            if cause == "D":
                top_mapping_kept = True
            counts[cause] += 1
            if verbose:
                print(f"[{cause}] linux:    {k}\n     softvfio: {o}")
            # a read that differs leaves the device buffer different
            if k.split()[1:2] == ["dma-read"]:
                buffer_differs = True
            # a write that differs leaves the user's memory different
            if k.split()[1:2] == ["dma-write"]:
                memory_differs = True
        model.apply(k)
    total = sum(counts.values())
    print(f"{mode} seed {seed}: {total} of {len(linux)} lines differ")
    for cause, n in sorted(counts.items()):
        print(f"  {cause:2} {n:4}  {CAUSES[cause]}")


if __name__ == "__main__":
    main()
