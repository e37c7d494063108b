#!/bin/sh
# Builds Linux's VFIO selftests (../shared/kselftest-vfio, read-only) into
# target/kselftest-vfio/{static,dynamic}.
#
# Why a copy: the shared tree stores the kernel tree's four symbolic links
# (tools/include/linux/pci_ids.h and the ioat/dsa register headers, listed
# as `symlink` lines in its MANIFEST.txt) as plain files holding the link
# target's path, so gcc reads "../../../include/linux/pci_ids.h" as C and
# fails. No Debian package is missing. The headers are included both with
# <...> and with "..." from the source's own directory, so an include-path
# overlay cannot replace them: we copy the tree (about 1 MB) and restore
# the links from the manifest.
#
# Usage: scripts/build-kselftest-vfio.sh [SRC] [BUILD] [static|dynamic|all]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-$here/../shared/kselftest-vfio}
build=${2:-$here/target/kselftest-vfio}
what=${3:-all}
[ -f "$src/MANIFEST.txt" ] || { echo "no selftest tree at $src" >&2; exit 2; }
mkdir -p "$build"
copy=$build/src
# Refresh the copy only when the shared tree changed.
if [ ! -f "$copy/MANIFEST.txt" ] || ! cmp -s "$src/MANIFEST.txt" "$copy/MANIFEST.txt"; then
	rm -rf "$copy"
	cp -R "$src" "$copy"
	chmod -R u+w "$copy"
	grep '^symlink ' "$src/MANIFEST.txt" | while read -r _ link _ target; do
		rm -f "$copy/$link"
		ln -s "$target" "$copy/$link"
	done
fi
exec make -s -C "$copy" BUILD="$build" "$what"
