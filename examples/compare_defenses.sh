#!/usr/bin/env bash
# Train the tabular detector on the synthetic flows with every defense, then audit each
# with one shared configuration and seed, so the numbers are comparable.
#
#   bash examples/compare_defenses.sh [OUT]     (about 10 minutes on a 2-core CPU)
set -euo pipefail
OUT=${1:-out/defenses}
AUDIT=${AUDIT:-.venv/bin/audit}
mkdir -p "$OUT"
for defense in none pgd-at trades attention-consistency; do
  "$AUDIT" train --detector tabular --data flows --defense "$defense" --seed 0 --out "$OUT/$defense.safetensors"
done
for defense in none pgd-at trades attention-consistency; do
  "$AUDIT" run --model "$OUT/$defense.safetensors" --eps 0.02,0.05,0.1 --seed 0 --out "$OUT/audit-$defense" || true
done
if "$AUDIT" compare --help >/dev/null 2>&1; then
  "$AUDIT" compare "$OUT"/audit-* --out "$OUT/compare"
else
  for defense in none pgd-at trades attention-consistency; do
    echo "== $defense"; cat "$OUT/audit-$defense/summary.md"
  done
fi
