#!/usr/bin/env bash
# One prepared GPU check of the attention kernels (hyperlora_jax/attention.py), ~4-5 min on one H100/H200.
#
#   bash bench/gpu_check.sh            # results under $OUT (device machine) or bench/results/gpu_check
#
# Stages (each under `timeout`, each prints and the script carries on when one fails):
#   1. environment: JAX on the GPU (pip-installs jax[cuda12] + flax/optax only when JAX cannot see a GPU)
#   2. tests/e2e/test_attention.py with HYPERLORA_GPU_TESTS=1: the real cuDNN kernel vs the dense path (bf16 forward +
#      gradients; packing, padding, sliding window, GQA/MQA), the tiny model with attention='cudnn' vs 'xla', and
#      the CPU-side kernel-selection / mask-construction tests (splash interpret-mode tests excluded: slow here)
#   3. bench/device_step.py --which lora on a gemma-2-2b config without attn_logit_softcapping (cuDNN has no
#      soft-cap), 2 packed rows x 4096 tokens, remat full: attention=xla vs attention=cudnn step time and memory
#   4. summary.json: both rows side by side (and the first-step losses, which must agree to ~1e-2)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT="${OUT:-bench/results/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
stage() { echo; echo "=== $1 ($(date -u +%T))"; }

stage "1. environment"
if ! timeout 120 "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
  echo "JAX sees no GPU: installing jax[cuda12] flax optax (needs network)"
  timeout 240 "$PY" -m pip install -q --retries 1 --timeout 15 "jax[cuda12]" flax optax pytest \
    || echo "pip install FAILED"
fi
timeout 120 "$PY" - <<'PY' 2>&1 | tee "$OUT/env.txt"
import importlib, platform
import jax
print("python", platform.python_version(), "| jax", jax.__version__, "| backend", jax.default_backend())
print("devices", [d.device_kind for d in jax.devices()])
for m in ("jaxlib", "flax", "optax", "numpy", "pytest"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING", e)
try:
    from jax._src import cuda_versions  # noqa
    print("cudnn", cuda_versions.cudnn_get_version() if cuda_versions else None)
except Exception as e:  # noqa: BLE001
    print("cudnn version unknown:", e)
PY

stage "2. attention tests on the GPU (cuDNN vs dense)"
# float32 references at full precision (JAX's GPU default for float32 dots is TF32-like)
HYPERLORA_GPU_TESTS=1 JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 \
  "$PY" -m pytest -q -p no:cacheprovider -rs tests/e2e/test_attention.py -k "not splash and not model_auto" 2>&1 \
  | tee "$OUT/pytest.txt"
echo "pytest exit ${PIPESTATUS[0]}"

stage "3. device_step: LoRA step on gemma-2-2b (no soft-cap), attention xla vs cudnn"
CFG=/tmp/gemma2_2b_nocap
mkdir -p "$CFG"
"$PY" - "$CFG" <<'PY'
import json, sys
d = json.load(open("tests/data/configs/gemma-2-2b.json"))
d["attn_logit_softcapping"] = None
json.dump(d, open(sys.argv[1] + "/config.json", "w"))
PY
for attn in xla cudnn; do
  echo "--- attention=$attn"
  timeout 150 "$PY" bench/device_step.py --which lora --base-config "$CFG" --attention "$attn" --batch 1 \
    --seq-len 4096 --steps 5 --remat full --out "$OUT/step_$attn.json" 2>&1 | tee "$OUT/bench_$attn.txt"
  echo "device_step exit ${PIPESTATUS[0]}"
done

stage "4. summary"
timeout 60 "$PY" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = {}
for attn in ("xla", "cudnn"):
    p = os.path.join(out, f"step_{attn}.json")
    if os.path.exists(p):
        rows[attn] = json.load(open(p))["rows"][0]
keys = ("attention", "step_s", "student_tokens_per_s", "mfu", "temp_GiB", "peak_device_GiB", "compile_s",
        "loss_first", "loss_last")
summary = {a: {k: r.get(k) for k in keys} for a, r in rows.items()}
if len(rows) == 2:
    summary["cudnn_speedup"] = rows["xla"]["step_s"] / rows["cudnn"]["step_s"]
    summary["loss_first_diff"] = abs(rows["xla"]["loss_first"] - rows["cudnn"]["loss_first"])
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1, default=float)
print(json.dumps(summary, indent=1, default=float))
PY
echo; echo "done $(date -u +%T); results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
