#!/usr/bin/env bash
# The full comparison behind docs/results.md ("Compare"); writes benchmarks/results/.
#   bash benchmarks/compare.sh            # OUT=runs/bench by default; finished points are kept (it resumes)
# Every point is one scripts/unlearn.py run (default flags) on the cached default baselines and Fisher, run by
# scripts/sweep.py; points shared by several tables (conv, sa, forget 2, lambda 1) run once.
#   1. conv, forget 2, every method          -> results/compare_conv_forget2.{md,json,png}
#   2. SA on each digit 0-9, conv and linear -> results/sa_digits_{conv,linear}.{md,json,png}, results/sa_bars.json
#   3. lambda 0 0.1 1 10 100, conv, forget 2 -> results/lambda_conv_forget2.{md,json,png}
#   4. digit 8 with --surrogate blank, conv and linear -> results/sa_bars_digit8_blank.json
# results/runs/<point>.json keeps each point's results.json (the run directories stay under $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench}
RES=benchmarks/results
mkdir -p "$RES/runs"
sweep() { python -u scripts/sweep.py --out-dir "$OUT" --no-aggregate "$@" | tee -a "$RES/sweep_log.txt"; }
agg() { local name=$1; shift; python scripts/aggregate.py "$@" --out "$RES/$name" --title "bash benchmarks/compare.sh: $name"; }
{ echo "command: bash benchmarks/compare.sh (OUT=$OUT)"; date -u; uptime; echo "cpus: $(nproc --all)";
  python -c "import torch; print('torch', torch.__version__)"; } >> "$RES/machine.txt"

sweep --forget 2 --method sa retrain naive no_ewc no_replay replay_only
agg compare_conv_forget2 "$OUT"/conv-{sa-forget2-lam1-gamma1,retrain-forget2,naive-forget2,no_ewc-forget2-gamma1,no_replay-forget2-lam1,replay_only-forget2-lam1-gamma1}
sweep --forget 0 1 2 3 4 5 6 7 8 9
agg sa_digits_conv "$OUT"/conv-sa-forget?-lam1-gamma1 "$OUT"/conv-retrain-forget2
sweep --forget 0 1 2 3 4 5 6 7 8 9 --arch linear
python benchmarks/sa_table.py "$OUT"/conv-sa-forget?-lam1-gamma1 "$OUT"/linear-sa-forget?-lam1-gamma1 > "$RES/sa_bars.json"
sweep --forget 2 --lam 0 0.1 1 10 100
agg lambda_conv_forget2 "$OUT"/conv-sa-forget2-lam*-gamma1 "$OUT"/conv-retrain-forget2
sweep --forget 2 --arch linear --method retrain
agg sa_digits_linear "$OUT"/linear-sa-forget?-lam1-gamma1 "$OUT"/linear-retrain-forget2
# 4. digit 8 with a surrogate the evaluator does not call an 8 (it calls grey and uniform noise 8s)
for arch in conv linear; do
  d="$OUT/$arch-sa-forget8-blank"
  [ -f "$d/results.json" ] || python scripts/unlearn.py --arch "$arch" --forget 8 --surrogate blank --run-dir "$d"
done
python benchmarks/sa_table.py "$OUT"/{conv,linear}-sa-forget8-blank > "$RES/sa_bars_digit8_blank.json"
for d in "$OUT"/*/; do
  if [ -f "$d/results.json" ]; then cp "$d/results.json" "$RES/runs/$(basename "$d").json"; fi
done
{ echo "finished:"; date -u; uptime; } >> "$RES/machine.txt"
