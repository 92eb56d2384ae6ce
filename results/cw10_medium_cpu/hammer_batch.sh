#!/usr/bin/env bash
# Why ftml-s0 learned hammer (Task 1) only to 0.50 when tr / replay / finetune / ewc reach 0.85-0.90 and vrmcl 0.80:
# the meta baselines split each batch into support and query (meta_baselines.split_support_query), so at the
# medium preset's batch 128 FTML's outer gradient sees 64 windows. Hammer alone, the medium preset otherwise:
#   ftml seed 1 (seed noise?), finetune at batch 64 (the query half, no meta step), ftml at batch 256 (query 128).
# From the repository root:  bash results/cw10_medium_cpu/hammer_batch.sh ; summary lines go to stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p runs/hammer-batch
one() {  # name, then train_cw10 flags
  local name=$1; shift
  python train_cw10.py --preset medium --tasks hammer --threads 1 --no-progress --out "runs/hammer-batch/$name" "$@" \
    > "runs/hammer-batch/$name.log" 2>&1
  python -c "import json, sys; s = json.load(open(sys.argv[1])); print(sys.argv[2], 'hammer own success', \
s['R'][0][0])" "runs/hammer-batch/$name/summary.json" "$name"
}
one ftml-s1 --method ftml --seed 1
one finetune-b64-s0 --method finetune --seed 0 --batch-size 64
one ftml-b256-s0 --method ftml --seed 0 --batch-size 256
