#!/bin/bash
# tree_pipeline.sh: a shell loop of pipelines of external commands, for
# ckrun's end-to-end tests (issue 5: process trees).
#
# Every tick bash forks a command substitution running a pipeline of six
# external programs (seq | awk | tr | sort | sha256sum | cut), each forked
# and exec'd under ckrun's agent, with pipes between them, then forks
# `sleep` for the pacing. A checkpoint can land anywhere: between ticks, in
# the middle of a pipeline with bytes in flight, while a command is being
# forked or exec'd, or during the sleep. The running value depends only on
# the tick number and the previous value.
#
# Prints "tick N <hash> <value>" per tick (echo writes straight to the
# file, unbuffered) and writes "N value" to trail.txt through fd 3, open
# from the start to the end (so every process of the tree inherits it: one
# file description shared by the whole tree), then "done <value>" and
# exits 3 (to check that the exit status of a script comes through). 150
# ticks with 20 ms sleeps: about 5 s.
#
# Why not `echo ... >> trail.txt` each tick: a file opened after the
# checkpoint is nothing a restart can know about, so what a killed run
# appended to it past the checkpoint would stay, and the restored run would
# append it a second time. Through an fd open at the checkpoint, the
# restored run writes again at the checkpoint's offset.
#
# Usage: bash tree_pipeline.sh [TICKS]   (default 150)

set -u
export LC_ALL=C
ticks=${1:-150}
value=1
exec 3> trail.txt
for ((t = 1; t <= ticks; t++)); do
    hi=$((t + value % 97 + 20))
    hash=$(seq "$t" "$hi" |
        awk -v v="$value" '{ s = (s * 31 + $1 * 7 + v) % 1000000007; print s, $1 % 13 }' |
        tr '0-9' 'a-j' |
        sort -r |
        sha256sum |
        cut -c1-16)
    value=$(((value * 131 + 16#${hash:0:8}) % 1000000007))
    echo "tick $t $hash $value"
    echo "$t $value" >&3
    sleep 0.02
done
exec 3>&-
echo "done $value lines $(wc -l < trail.txt)"
exit 3
