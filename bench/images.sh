#!/usr/bin/env bash
# Moving an image through the cluster (needs root and overlayfs). Usage: bench/images.sh [MIB]
# A rootfs of MIB MiB (default 256) of incompressible data plus busybox, as a plain tar.
#  (a) `gaffer image import`: hash + upload + the server's check, into a release `gaffer dev`.
#  (b) the first task on it: submit -> succeeded, which includes the node's fetch over its
#      agent stream, verification and unpack (the task itself only echoes).
#  (c) side by side, what a node must do at the least: copy the archive (cp) and unpack it
#      (tar -x), and sha256sum of it, with cold-ish caches equal for both (same file, same run).
source "$(dirname "$0")/lib.sh"
MIB="${1:-256}"
if [ "$(id -u)" != 0 ]; then echo "bench/images.sh needs root (containers)" >&2; exit 1; fi
(cd "$ROOT" && cargo build --release --quiet --bin gaffer)
start_dev
trap stop_dev EXIT

ROOTFS="$WORK/rootfs"
mkdir -p "$ROOTFS/bin"
cp /bin/busybox "$ROOTFS/bin/busybox"
ln -s busybox "$ROOTFS/bin/sh"
head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$ROOTFS/blob"
tar -C "$ROOTFS" -cf "$WORK/image.tar" .
SIZE=$(stat -c %s "$WORK/image.tar")
mib() { python3 -c "print(f'{$SIZE / 1048576 / $1:.0f}')"; }

t0=$(now)
"$GAFFER" image import big "$WORK/image.tar" >/dev/null
t1=$(now)
jid=$("$GAFFER" submit -q --image big --shell "echo hi")
"$GAFFER" wait "$jid" >/dev/null
t2=$(now)
import_s=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
first_s=$(python3 -c "print(f'{$t2 - $t1:.2f}')")

mkdir -p "$WORK/copy/rootfs"
t3=$(now)
cp "$WORK/image.tar" "$WORK/copy/image.tar"
tar -C "$WORK/copy/rootfs" -xf "$WORK/copy/image.tar"
sync -f "$WORK/copy/image.tar"
t4=$(now)
sha256sum "$WORK/image.tar" >/dev/null
t5=$(now)
base_s=$(python3 -c "print(f'{$t4 - $t3:.2f}')")
sha_s=$(python3 -c "print(f'{$t5 - $t4:.2f}')")

echo "image: $(python3 -c "print(f'{$SIZE / 1048576:.0f}')") MiB plain tar"
echo "(a) gaffer image import (hash, upload, check, fsync): ${import_s} s ($(mib "$import_s") MiB/s)"
echo "(b) first task on it (fetch over the agent stream, verify, unpack, run): ${first_s} s ($(mib "$first_s") MiB/s)"
echo "(c) baseline cp + tar -x: ${base_s} s; sha256sum alone: ${sha_s} s"
echo "ratio (b)/(c): $(python3 -c "print(f'{$first_s / $base_s:.1f}')")"
