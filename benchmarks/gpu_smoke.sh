#!/usr/bin/env bash
# GPU smoke test, for the first CUDA machine: every arm (base, rcc, bicc, bicc+rcc) of one
# variant trains a few steps in bf16 on the tiny model (and again with vLLM colocate
# generation when vllm is installed), then the last model is evaluated through the hf and
# the vllm backends of lm-eval. One summary line per check, "PASS|FAIL|SKIP <check> <detail>",
# also written to $OUT/gpu_smoke.txt; the full logs go next to it.
#
#   benchmarks/gpu_smoke.sh                 # variant grpo, 4 steps, into ./gpu_smoke/
#   VARIANT=dapo STEPS=8 OUT=/tmp/smoke benchmarks/gpu_smoke.sh
#
# Exit code: 0 when every check that ran passed, 1 otherwise, 3 without CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
VARIANT="${VARIANT:-grpo}"
STEPS="${STEPS:-4}"
OUT="${OUT:-gpu_smoke}"
mkdir -p "$OUT"
SUMMARY="$OUT/gpu_smoke.txt"
: >"$SUMMARY"
export BICC_LAB_DATA_DIR="${BICC_LAB_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

line() { echo "$*" | tee -a "$SUMMARY"; }

cuda="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)"
if [[ -z "$cuda" ]]; then
    line "SKIP cuda no CUDA device visible to $PY; nothing checked"
    exit 3
fi
line "INFO cuda $cuda, torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
has_vllm=0
"$PY" -c 'import vllm' >/dev/null 2>&1 && has_vllm=1

failed=0
# check NAME LOG CMD...: run CMD (log to $OUT/NAME.log), one PASS/FAIL line with its time
check() {
    local name="$1"; shift
    local log="$OUT/$name.log" t0=$SECONDS
    if "$@" >"$log" 2>&1; then
        line "PASS $name $((SECONDS - t0))s $(grep -E '^trained|avg@' "$log" | tail -1)"
    else
        failed=1
        line "FAIL $name $((SECONDS - t0))s $(grep -vE '^\s*$' "$log" | tail -1) (log: $log)"
    fi
}

COMMON=(--set "variant=$VARIANT" --set "train.max_steps=$STEPS" --set train.bf16=true
        --set model.dtype=bfloat16 --set train.save_steps=1000 --no-eval)
last=""
for arm in base rcc bicc bicc+rcc; do
    bicc=false; rcc=false
    [[ $arm == *bicc* ]] && bicc=true
    [[ $arm == *rcc* ]] && rcc=true
    dir="$OUT/train-$VARIANT-${arm/+/_}"
    check "train-$VARIANT-$arm-bf16" "$PY" -m bicc_lab.cli.main train experiments/tiny.yaml "${COMMON[@]}" \
        --set "bicc.enabled=$bicc" --set "rcc.enabled=$rcc" --output-dir "$dir" --no-resume
    last="$dir/final"
    if [[ $has_vllm == 1 ]]; then
        check "train-$VARIANT-$arm-bf16-vllm-colocate" "$PY" -m bicc_lab.cli.main train experiments/tiny.yaml \
            "${COMMON[@]}" --set "bicc.enabled=$bicc" --set "rcc.enabled=$rcc" \
            --set train.use_vllm=true --set train.vllm_mode=colocate --output-dir "$dir-vllm" --no-resume
    else
        line "SKIP train-$VARIANT-$arm-bf16-vllm-colocate vllm is not installed (pip install -e '.[gpu]')"
    fi
done

EVAL=(--tasks arith_test --repeats 4 --limit 50 --max_new_tokens 6)
if [[ -d "$last" ]]; then
    check "eval-hf" "$PY" -m bicc_lab.cli.main eval --model hf --model_args "pretrained=$last" "${EVAL[@]}" \
        --output_path "$OUT/eval-hf.json"
    if [[ $has_vllm == 1 ]]; then
        check "eval-vllm" "$PY" -m bicc_lab.cli.main eval --model vllm --model_args "pretrained=$last" "${EVAL[@]}" \
            --output_path "$OUT/eval-vllm.json"
    else
        line "SKIP eval-vllm vllm is not installed"
    fi
else
    failed=1
    line "FAIL eval no trained model to evaluate ($last missing)"
fi
line "DONE $([[ $failed == 0 ]] && echo all checks passed || echo some checks FAILED) ($SUMMARY)"
exit $failed
