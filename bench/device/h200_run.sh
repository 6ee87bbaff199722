#!/usr/bin/env bash
# Runs on the GPU machine from the repository root: makes `deepserve` importable without
# installing (the repository root on PYTHONPATH, or a .pth file for Triton's stub), then runs the steps named as arguments, writing
# logs and JSON to $OUT. Each step has its own time limit so one slow step cannot take
# the others' output with it.
#   bash bench/device/h200_run.sh tests attention decode       # call 1
#   bash bench/device/h200_run.sh tests attention compiled     # call 2
#   bash bench/device/h200_run.sh tests serving                # issue 19: items 1-2
#   bash bench/device/h200_run.sh kvfp8                        # issue 19: item 3 (fp8 KV)
#   bash bench/device/h200_run.sh chunked speculative          # issue 19: items 4 and 7 (planned)
#   bash bench/device/h200_run.sh triton    # carry .whl (numpy 1.26, tritonclient, rapidjson)
#       and .devcarry/th.tar.xz (tritonserver, Python backend, 3.12 stub, their libraries)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/gpu.txt"
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    tests) timeout 120 python3 -m pytest -q -p no:cacheprovider --noconftest tests/unit/engine_features/test_gpu.py 2>&1 | tail -15 | tee "$OUT/tests.log" ;;
    attention) timeout 200 python3 bench/bench_decode_attention.py --out "$OUT/attention.json" 2>&1 | tee "$OUT/attention.log" ;;
    decode) timeout 330 python3 bench/bench_h200.py --baseline --throughput-seqs 128 256 --out "$OUT/decode.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/decode.log" ;;
    compiled) timeout 540 python3 bench/bench_h200.py --compile --tune --no-hf --skip-memory --throughput-seqs 256 --out "$OUT/compiled.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/compiled.log" ;;
    aps) timeout 280 python3 bench/bench_h200.py --batch --aps --no-hf --skip-memory --throughput-seqs --out "$OUT/aps.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/aps.log" ;;
    throughput) timeout 300 python3 bench/bench_h200.py --batch --compile --tune --no-hf --skip-memory --throughput-seqs 256 --out "$OUT/throughput.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/throughput.log" ;;
    serving) timeout 460 python3 bench/bench_serving.py --out "$OUT/serving.json" 2>&1 | tee "$OUT/serving.log" ;;
    kvfp8) timeout 560 python3 bench/bench_kv_fp8.py --out "$OUT/kv_fp8.json" 2>&1 | tee "$OUT/kv_fp8.log" ;;
    chunked) timeout 500 python3 bench/bench_chunked_prefill.py --device cuda --prompts 128,1024,4096,16384,32768,512 \
        --chunks 256,512,2048 --every 16 --decoders 16 2>&1 | tee "$OUT/chunked_prefill.log" ;;
    speculative) DEEPSERVE_CACHE_DIR=/tmp/ds-models timeout 300 python3 bench/bench_speculative.py --device cuda \
        --batches 1,16 --prompt-set novel 2>&1 | tee "$OUT/speculative.log" ;;
    triton)  # the Triton Python backend stub needs numpy<2 (NOTES.md): swap it in, last step;
      # the stub runs Python isolated (no PYTHONPATH), so the shim goes in as a .pth file
      python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl \
        && tar -C /tmp -xJf .devcarry/th.tar.xz \
        && echo "$PWD" > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/deepserve-shim.pth" \
        && DEEPSERVE_TRITON_HOME=/tmp/th timeout 420 python3 bench/bench_triton_overhead.py --compile --out "$OUT/triton.json" 2>&1 | grep -v "Loading weights" | tail -40 | tee "$OUT/triton.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
echo "=== done $(date +%T)"
