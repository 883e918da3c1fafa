#!/usr/bin/env bash
# GPU smoke test of spacil (issue 23): the paths only a CUDA machine exercises, in a few minutes.
#
#   bash scripts/gpu_smoke.sh                 # on a CUDA machine (default --device cuda)
#   bash scripts/gpu_smoke.sh --device cpu    # the same steps on the CPU (checks the script itself)
#   options: --quick (fewer epochs), --workdir DIR (keep the files there; default a temporary folder)
#
# Steps (each PASS, FAIL or SKIP; the script exits 1 if any step FAILs, and prints a summary):
#   1. two SPA tasks with the tiny backbone on the device (train.device and backbone.device);
#   2. a run killed with kill -9 after its first task, resumed by the same command, ends with the same
#      stage accuracies as an uninterrupted run;
#   3. torchrun with 2 processes and backbone.device=<device> extracts one cache entry (skipped with
#      fewer than 2 GPUs; on --device cpu two CPU processes);
#   4. bf16 and fp32 features get different cache keys, and both are finite.
set -u

DEVICE=cuda
QUICK=0
WORKDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    --quick) QUICK=1; shift ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "--device must be cuda or cpu" >&2; exit 2 ;; esac

PY=${PYTHON:-python}
if [ -z "$WORKDIR" ]; then
  WORKDIR=$(mktemp -d -t spacil-gpu-smoke-XXXXXX)
  trap 'rm -rf "$WORKDIR"' EXIT
fi
mkdir -p "$WORKDIR"
export HF_HUB_OFFLINE=1
EPOCHS=$([ "$QUICK" = 1 ] && echo 2 || echo 5)
SLOW_EPOCHS=$([ "$QUICK" = 1 ] && echo 20 || echo 60)
RESULTS=()
FAILED=0

record() {  # record STATUS NAME DETAIL
  RESULTS+=("$1|$2|$3")
  [ "$1" = FAIL ] && FAILED=1
  echo "[$1] $2: $3"
}

cli() { "$PY" -m spacil.cli -q "$@"; }

echo "== spacil GPU smoke: device=$DEVICE quick=$QUICK workdir=$WORKDIR"
if ! "$PY" - "$DEVICE" <<'EOF'
import sys
import torch
device = sys.argv[1]
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, GPUs: {torch.cuda.device_count()}")
if torch.cuda.is_available():
    print("card:", torch.cuda.get_device_name(0))
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device: run with --device cpu to check the script on the CPU")
EOF
then
  record FAIL environment "--device $DEVICE is not available"
  exit 1
fi
N_GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")

# --- data: 8 classes x 6 train + 3 test PNGs, colours by class (what the tests use, written here) ---------------
DATA="$WORKDIR/data"
"$PY" - "$DATA" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for split, n in (("train", 6), ("test", 3)):
    for c in range(8):
        folder = root / split / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(37 * c) % 256, (91 * c + 40) % 256, (53 * c + 120) % 256])
        for i in range(n):
            arr = np.clip(base + rng.integers(-15, 16, size=(36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"img_{i:03d}.png")
EOF

COMMON=(--set backbone.name=tiny-test --set "backbone.device=$DEVICE" --set "train.device=$DEVICE"
        --set "data.root=$DATA" --set "cache.root=$WORKDIR/cache" --set backbone.num_workers=0
        --set run.plots=false --set method.name=spa --set method.spa.selection.k=4)

stage_accuracies() {  # the stage accuracies of the only run folder under $1
  "$PY" -c "import json, pathlib, sys; s = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob('*/summary.json')]; print(json.dumps(s[0]['stage_accuracies']) if len(s) == 1 else 'none')" "$1"
}

# --- 1. two SPA tasks on the device ----------------------------------------------------------------------------
if cli train "${COMMON[@]}" --set data.init_cls=4 --set data.increment=4 --set "train.epochs=$EPOCHS" \
     --set "run.output_dir=$WORKDIR/runs-two" --no-progress > "$WORKDIR/two.log" 2>&1; then
  acc=$(stage_accuracies "$WORKDIR/runs-two")
  if [ "$acc" != none ] && "$PY" -c "import json, sys; a = json.loads(sys.argv[1]); sys.exit(not (len(a) == 2 and all(0 <= x <= 100 for x in a)))" "$acc"; then
    record PASS "two SPA tasks on $DEVICE" "stage accuracies $acc"
  else
    record FAIL "two SPA tasks on $DEVICE" "no finished run with 2 stages (see $WORKDIR/two.log)"
  fi
else
  record FAIL "two SPA tasks on $DEVICE" "exit $? (see $WORKDIR/two.log)"; tail -5 "$WORKDIR/two.log"
fi

# --- 2. kill -9 after the first task, resume ---------------------------------------------------------------------
# the kill must land between the first and the last stage: if the run got further (a fast machine), try again
# with more epochs per task, in a fresh folder
killed=0
for factor in 1 4 16; do
  epochs=$((SLOW_EPOCHS * factor))
  RESUME=(--set data.init_cls=2 --set data.increment=2 --set "train.epochs=$epochs" --no-progress)
  out="$WORKDIR/runs-killed-$epochs"
  # python itself in the background (not through the cli function): $! must be the process kill -9 hits
  "$PY" -m spacil.cli -q train "${COMMON[@]}" "${RESUME[@]}" --set "run.output_dir=$out" > "$WORKDIR/killed.log" 2>&1 &
  pid=$!
  killed=0
  for _ in $(seq 1 600); do  # up to 60 s for the first stage to be written
    if [ -n "$(cat "$out"/*/metrics.jsonl 2>/dev/null)" ]; then
      kill -9 "$pid" 2>/dev/null && killed=1
      break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  wait "$pid" 2>/dev/null
  stages_done=$(cat "$out"/*/metrics.jsonl 2>/dev/null | wc -l)
  if [ "$killed" = 1 ] && [ "$stages_done" -lt 4 ]; then break; fi
  killed=0
done
if [ "$killed" = 1 ]; then
  cli train "${COMMON[@]}" "${RESUME[@]}" --set "run.output_dir=$WORKDIR/runs-full" > "$WORKDIR/full.log" 2>&1
  full=$(stage_accuracies "$WORKDIR/runs-full")
  # without -q: the "resuming ... after task N" line is logged at INFO
  "$PY" -m spacil.cli train "${COMMON[@]}" "${RESUME[@]}" --set "run.output_dir=$out" \
    > "$WORKDIR/resumed.log" 2>&1
  resumed=$(stage_accuracies "$out")
  if [ "$full" != none ] && [ "$resumed" = "$full" ] && grep -q "resuming" "$WORKDIR/resumed.log"; then
    record PASS "kill -9 and resume" "same stage accuracies as uninterrupted: $full"
  else
    record FAIL "kill -9 and resume" "resumed $resumed vs uninterrupted $full, or no 'resuming' line (see $WORKDIR/resumed.log)"
  fi
else
  record FAIL "kill -9 and resume" "could not kill the run between its first and last task (raise SLOW_EPOCHS?)"
fi

# --- 3. torchrun, 2 processes, backbone.device=<device> ----------------------------------------------------------
if [ "$DEVICE" = cuda ] && [ "$N_GPUS" -lt 2 ]; then
  record SKIP "torchrun 2 processes" "needs 2 GPUs, found $N_GPUS"
elif ! "$PY" -c "import torch.distributed.run" 2>/dev/null; then
  record SKIP "torchrun 2 processes" "torch.distributed is not available"
else
  TR=(--set backbone.name=tiny-test --set "backbone.device=$DEVICE" --set "data.root=$DATA"
      --set backbone.num_workers=0 --set backbone.batch_size=8 --no-progress)
  if "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m spacil.cli -q extract "${TR[@]}" \
       --set "cache.root=$WORKDIR/cache-torchrun" > "$WORKDIR/torchrun.log" 2>&1 \
     && cli extract "${TR[@]}" --set "cache.root=$WORKDIR/cache-single" > "$WORKDIR/single.log" 2>&1; then
    if "$PY" - "$WORKDIR/cache-torchrun" "$WORKDIR/cache-single" <<'EOF'
import sys
from pathlib import Path
import numpy as np
a, b = (sorted(Path(r).glob("image_folder/*/patches.npy")) for r in sys.argv[1:3])
assert len(a) == len(b) == 2, (a, b)
assert [p.parent.name for p in a] == [p.parent.name for p in b], "different cache keys"
for x, y in zip(a, b):  # same batches on the same device: the tolerance only allows for other kernels
    np.testing.assert_allclose(np.load(x).astype(np.float32), np.load(y).astype(np.float32), atol=1e-2, rtol=1e-2)
EOF
    then
      record PASS "torchrun 2 processes" "one cache entry per split, same key and features as one process"
    else
      record FAIL "torchrun 2 processes" "entries differ from a single-process extraction"
    fi
  else
    record FAIL "torchrun 2 processes" "extraction failed (see $WORKDIR/torchrun.log)"; tail -5 "$WORKDIR/torchrun.log"
  fi
fi

# --- 4. bf16 vs fp32 features ------------------------------------------------------------------------------------
PREC=(--set backbone.name=tiny-test --set "backbone.device=$DEVICE" --set "data.root=$DATA"
      --set backbone.num_workers=0 --set "cache.root=$WORKDIR/cache-precision" --split test --no-progress)
if cli extract "${PREC[@]}" --set backbone.precision=fp32 > "$WORKDIR/fp32.log" 2>&1 \
   && cli extract "${PREC[@]}" --set backbone.precision=bf16 > "$WORKDIR/bf16.log" 2>&1; then
  if out=$("$PY" - "$WORKDIR/cache-precision" <<'EOF'
import json
import sys
from pathlib import Path
import numpy as np
entries = sorted(Path(sys.argv[1]).glob("image_folder/test-*/manifest.json"))
assert len(entries) == 2, f"{len(entries)} cache entries for fp32 and bf16 (the key ignores the precision)"
arrays = {}
for manifest in entries:
    autocast = json.loads(manifest.read_text())["inputs"].get("encoder_autocast", "fp32")
    arrays[autocast] = np.load(manifest.parent / "patches.npy").astype(np.float32)
    assert np.isfinite(arrays[autocast]).all(), f"{autocast} features hold NaN/inf"
assert set(arrays) == {"fp32", "bfloat16"}, sorted(arrays)
print(f"max |bf16 - fp32| = {np.abs(arrays['fp32'] - arrays['bfloat16']).max():.3g}")
EOF
  ); then
    record PASS "bf16 vs fp32 features" "two cache keys, both finite; $out"
  else
    record FAIL "bf16 vs fp32 features" "$out"
  fi
else
  record FAIL "bf16 vs fp32 features" "extraction failed (see $WORKDIR/fp32.log, bf16.log)"
fi

echo
echo "== summary (device=$DEVICE)"
for row in "${RESULTS[@]}"; do
  IFS='|' read -r status name detail <<< "$row"
  printf '%-5s %-28s %s\n' "$status" "$name" "$detail"
done
if [ "$FAILED" = 1 ]; then
  echo "GPU smoke: FAILED"
  exit 1
fi
echo "GPU smoke: OK"
