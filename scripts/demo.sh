#!/usr/bin/env bash
# Checkpoint-and-restart demo, end to end: runs examples/counter.c under
# ckrun, checkpoints it, kills it, restarts it from the image, and checks
# that its output equals an uninterrupted run's.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== building ckrun (release)"
cargo build --release --workspace -q
CKRUN=$PWD/target/release/ckrun
work=$(mktemp -d /tmp/ckrun-demo.XXXXXX)
cc -O1 -o "$work/counter" examples/counter.c
cd "$work"
mkdir -p bare run images

wait_line() { # wait_line FILE REGEX: until a line matches (60 s at most)
  for _ in $(seq 6000); do grep -Eq "$2" "$1" 2>/dev/null && return 0; sleep 0.01; done
  echo "demo: timed out waiting for '$2' in $1" >&2; exit 1
}

echo "== uninterrupted run, for reference"
(cd bare && ../counter > out.txt) || true

echo "== run under ckrun: ckrun --dir images ./counter"
(cd run && exec "$CKRUN" --dir ../images ../counter > out.txt 2> ../ckrun.log) &
ck=$!
wait_line run/out.txt '^tick 40 '
echo "   at: $(tail -1 run/out.txt)"
echo "== kill -USR2 $ck   (checkpoint; the program keeps running)"
kill -USR2 $ck
wait_line ckrun.log 'checkpoint 1:'
sed 's/^/   /' ckrun.log
wait_line run/out.txt '^tick 60 '
pid=$(cat /proc/$ck/task/$ck/children | tr -d ' ')
echo "== kill -9 $pid   (the job dies at: $(tail -1 run/out.txt))"
kill -9 "$pid"; wait $ck || true

img=$(ls images/*.ckimg)
echo "== ckrun --inspect $img"
"$CKRUN" --inspect "$img" | sed -n '1,8p' | sed 's/^/   /'
echo "== ckrun --restart $img"
(cd run && "$CKRUN" --restart "../$img" 2>> ../ckrun.log) && code=0 || code=$?
tail -1 ckrun.log | sed 's/^/   /'
echo "   program finished with exit code $code: $(tail -1 run/out.txt)"

if cmp -s bare/out.txt run/out.txt && cmp -s bare/state.dat run/state.dat; then
  echo "== PASS: output and files equal the uninterrupted run's ($work)"
else
  echo "== FAIL: output differs from the uninterrupted run ($work)"; exit 1
fi
