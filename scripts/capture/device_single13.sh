#!/bin/bash
# One device call on a single-GPU kind (nvidia-h200): issue 13's captures. Writes $OUT/traces.tar
# (gzipped traces + manifest lines) and $OUT/log.txt; then, here:
#   mkdir /tmp/s13 && tar -xf .../traces.tar -C /tmp/s13 && python3 scripts/capture/capture_more.py \
#       --finalize /tmp/s13 --dest fixtures/captures --note "..."
export PYTHONUNBUFFERED=1
set -o pipefail
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
{
  nvidia-smi -L
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
  python3 -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>&1 | tail -1
  python3 -c "import flash_attn_interface; print('flash_attn_interface (FA3) present')" 2>&1 | tail -1
  python3 scripts/capture/capture_more.py --part single13 --out /tmp/tr --experts 64 --graph-steps 3 \
      --decode-steps 6 --layers 4 --budget "${BUDGET:-400}" 2>&1 | grep -v USDT
} 2>&1 | tee "$OUTDIR/log.txt"
cd /tmp/tr && gzip -9 -f *.json && tar -cf "$OUTDIR/traces.tar" *.json.gz manifest_part_*.jsonl && ls -la /tmp/tr
