#!/usr/bin/env bash
# SmolLM2-135M-Instruct D2L, end to end on one accelerator: GGUF -> HF directory -> train configs/d2l.py:smollm2
# for a wall-clock budget -> facts evaluation by document length -> export -> internalize a paragraph -> ask.
#
#   GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf OUT=results/ TRAIN_S=330 bash bench/smollm2_gpu.sh
#
# Training stops after TRAIN_S seconds (SIGTERM: the trainer saves its state and exits 0) with a constant learning
# rate after warm-up, so the run is valid wherever it stops; the step count reached is in metrics.jsonl.
# Env: GGUF, OUT (results), WORK (scratch, default /tmp/smol), TRAIN_S, EVAL_N (per length), LENGTHS, EXTRA
# (more --config.* overrides, e.g. for a CPU dry run), EVAL_BS.
set -uo pipefail
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
: "${GGUF:?GGUF=path to the SmolLM2 GGUF}" "${OUT:?OUT=results directory}"
WORK=${WORK:-/tmp/smol}; TRAIN_S=${TRAIN_S:-330}; EVAL_N=${EVAL_N:-64}; LENGTHS=${LENGTHS:-128,256,512,1024}
EVAL_BS=${EVAL_BS:-64}; EXTRA=${EXTRA:-}
mkdir -p "$OUT" "$WORK"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

stamp "convert"
python -m hyperlora_jax.cli.convert gguf "$GGUF" "$WORK/base" --dtype float32 --overwrite 2>&1 | tail -3

stamp "train for ${TRAIN_S} s"
# shellcheck disable=SC2086
timeout -s TERM "$TRAIN_S" python -m hyperlora_jax.train --config=configs/d2l.py:smollm2 \
  --config.model.base_model="$WORK/base" --workdir="$WORK/run" --config.schedule=constant \
  --config.num_train_steps=1000000 --config.checkpoint_every_steps=0 --config.log_every_steps=25 $EXTRA \
  > "$OUT/train.log" 2>&1
echo "train exit $?"; tail -5 "$OUT/train.log"
cp "$WORK/run/metrics.jsonl" "$OUT/" 2>/dev/null

stamp "evaluate (facts suite, n=$EVAL_N per length, lengths $LENGTHS)"
# shellcheck disable=SC2086
python -m hyperlora_jax.cli.evaluate --config=configs/d2l.py:smollm2 --config.model.base_model="$WORK/base" $EXTRA \
  --checkpoint "$WORK/run" --workdir "$WORK/run" --suites facts --lengths "$LENGTHS" --n "$EVAL_N" \
  --methods no_context,in_context,d2l,d2l_wrong_doc --batch_size "$EVAL_BS" > "$OUT/evaluate.log" 2>&1
echo "evaluate exit $?"; tail -12 "$OUT/evaluate.log"
cp "$WORK/run/eval/evaluate.json" "$WORK/run/eval/evaluate.md" "$OUT/" 2>/dev/null

stamp "export, internalize a paragraph, ask"
python -m hyperlora_jax.cli.export --workdir "$WORK/run" --out "$WORK/export" --overwrite > "$OUT/demo.txt" 2>&1
python bench/smollm2_demo.py --d2l "$WORK/export" >> "$OUT/demo.txt" 2>&1
grep -v -i warn "$OUT/demo.txt" | tail -30; ls -la "$OUT"
stamp "done"
