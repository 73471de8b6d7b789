#!/usr/bin/env bash
# The first look at a CUDA GPU, in at most 8 minutes, ending in one table:
#   1. the test suite's CUDA cases (`pytest -m cuda`: tests marked `cuda`);
#   2. training throughput and MFU of GPT-2 124M in bf16 (1,024-token sequences, batch 16),
#      eager and with torch.compile (bench/train_speed.py, ours only);
#   3. decode at batch 1 on Qwen3-0.6B's shapes in bf16 (bench/inference_speed.py);
#   4. the engine's throughput on 256 requests, Qwen3-0.6B's shapes, bf16.
# Each step has its own time limit, cut further so the whole ends within 8 minutes; a step
# that fails or runs out of time shows so in the table and the next one runs.
#
#   bash bench/gpu_check.sh                # from the repository root, on the GPU machine
#   bash bench/gpu_check.sh --dry-run      # the steps and their limits, nothing run
#   bash bench/gpu_check.sh --table DIR    # the table again from a former run's logs
#
# PYTHON picks the interpreter (default .venv/bin/python, else python3); LOGS the folder for
# each step's output (default a new temporary one, printed at the end).
set -u

cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
BUDGET=480  # seconds for everything
MODE=run
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --table)
    [ -d "${2:-}" ] || { echo "error: --table needs the folder of a former run's logs" >&2; exit 2; }
    MODE=table; LOGS=$2 ;;
  "") ;;
  *) echo "error: unknown option '$1' (use --dry-run or --table DIR)" >&2; exit 2 ;;
esac
STARTED=$SECONDS

# step NAME LIMIT COMMAND...: run COMMAND with at most LIMIT seconds (less if the budget is
# nearly spent), its output in $LOGS/NAME.out, its exit status and seconds in $LOGS/NAME.status.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - (SECONDS - STARTED) - 5 ))
  (( limit > left )) && limit=$left
  if [ "$MODE" = dry ]; then
    echo "$name (at most ${limit}s): $(printf '%q ' "$@")"
    return
  fi
  if (( limit < 10 )); then
    echo "skipped 0" > "$LOGS/$name.status"
    return
  fi
  echo "== $name (at most ${limit}s)" >&2
  local begun=$SECONDS
  PYTHONPATH=src timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.out" 2>&1
  echo "$? $(( SECONDS - begun ))" > "$LOGS/$name.status"
  tail -n 3 "$LOGS/$name.out" >&2
}

if [ "$MODE" = run ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
    2>/dev/null; then
  echo "error: $PYTHON sees no CUDA GPU (torch.cuda.is_available() is false)" >&2
  exit 2
fi
[ "$MODE" = run ] && LOGS=${LOGS:-$(mktemp -d /tmp/gpu_check.XXXXXX)}

if [ "$MODE" != table ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
  # Only the files with CUDA cases: a module that cannot import here stops no other.
  step tests 120 "$PYTHON" -m pytest -q -p no:xdist -m cuda --continue-on-collection-errors \
    $(grep -l "mark.cuda" tests/test_*.py)
  step train_eager 50 "$PYTHON" bench/train_speed.py --device cuda --shapes 124m-1k \
    --precision bf16 --peers "" --rounds 3 --steps 10 --json
  step train_compiled 110 "$PYTHON" bench/train_speed.py --device cuda --shapes 124m-1k \
    --precision bf16 --peers "" --rounds 3 --steps 10 --compile --json
  step decode 60 "$PYTHON" bench/inference_speed.py --device cuda --preset qwen3-0.6b \
    --no-peers --parts decode --precision bf16 --new-tokens 128 --rounds 3 --json
  step throughput 140 "$PYTHON" bench/inference_speed.py --device cuda --preset qwen3-0.6b \
    --no-peers --parts throughput --precision bf16 --requests 256 --json
fi
[ "$MODE" = dry ] && exit 0

# The table: one row a step, read back from the logs.
"$PYTHON" - "$LOGS" <<'EOF'
import json
import sys
from pathlib import Path

logs = Path(sys.argv[1])


def status(name):
    """'ok', 'timed out', 'failed (exit N)' or 'not run', and the step's seconds."""
    path = logs / f"{name}.status"
    if not path.exists():
        return "not run", "-"
    code, seconds = path.read_text().split()
    if code == "skipped":
        return "skipped: out of time", "-"
    code = int(code)
    state = {0: "ok", 124: "timed out", 137: "timed out"}.get(code, f"failed (exit {code})")
    return state, f"{seconds}s"


def output(name):
    path = logs / f"{name}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def last_json(name):
    """The last line of the step's output that is a JSON object (the bench's --json)."""
    for line in reversed(output(name).splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def tests():
    lines = [line for line in output("tests").splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "-"


def train(name):
    data = last_json(name)
    if not data:
        return "-"
    row = next(r for r in data["rows"] if r["model"] == "llmscratch")
    return (f"{row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.1%} "
            f"({data['machine']})")


def decode():
    data = last_json("decode")
    if not data:
        return "-"
    rows = data["rows"]
    return "; ".join(f"{r['model']} {r['tokens_per_s']:,.1f} tok/s "
                     f"({r['of_bandwidth_limit']:.0%} of the bandwidth limit)"
                     for r in rows) + \
        f"; engine = generate for {rows[0]['engine_agrees_with_generate']}"


def throughput():
    data = last_json("throughput")
    if not data:
        return "-"
    rows = {r["model"]: r for r in data["rows"]}
    limit = rows["compute, then cache reads"]["output_tokens_per_s"]
    engines = [name for name in rows if not name.startswith("compute")]
    return "; ".join(f"{name} {rows[name]['output_tokens_per_s']:,.0f} tok/s" + (
        "" if "batch 1" in name else f" ({rows[name]['vs_our_batch_1']:.1f}x batch 1, "
        f"{rows[name]['output_tokens_per_s'] / limit:.0%} of the limit)") for name in engines) \
        + f"; limit (compute, then cache reads) {limit:,.0f} tok/s"


steps = [("CUDA tests (pytest -m cuda)", "tests", tests),
         ("train GPT-2 124M, bf16, eager", "train_eager", lambda: train("train_eager")),
         ("train GPT-2 124M, bf16, compiled", "train_compiled",
          lambda: train("train_compiled")),
         ("decode batch 1, Qwen3-0.6B shapes, bf16", "decode", decode),
         ("engine, 256 requests, Qwen3-0.6B shapes, bf16", "throughput", throughput)]
print("| step | status | time | result |\n|---|---|---:|---|")
for label, name, result in steps:
    state, seconds = status(name)
    try:
        text = result()
    except (KeyError, StopIteration, TypeError, ValueError) as error:
        text = f"unreadable output ({type(error).__name__})"
    print(f"| {label} | {state} | {seconds} | {text} |")
print(f"\nlogs: {logs}")
EOF
