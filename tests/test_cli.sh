#!/bin/sh
# End-to-end checks of the cserve command line on the synthetic models: exit
# codes, output shapes, and that bad input gives a one-line message, not a crash.
set -u
bin=${1:-build/cserve}
m=build/models/tiny
pass=0; fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

out=$($bin tokenize --model $m "Hello world") && [ "$out" = "[15496, 995]" ] && ok || bad "tokenize: $out"
out=$($bin tokenize --model $m --decode "[15496, 995]") && [ "$out" = "Hello world" ] && ok || bad "decode: $out"
out=$($bin generate --model $m --json --seed 3 --max-new-tokens 8 "Once upon a time") &&
    printf '%s' "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert isinstance(d, list) and len(d) == 1 and set(d[0]) == {"generated_text"}, d
assert d[0]["generated_text"].startswith("Once upon a time"), d' && ok || bad "generate --json: $out"
a=$($bin generate --model $m --seed 9 --max-new-tokens 12 "Hi") && b=$($bin generate --model $m --seed 9 --max-new-tokens 12 "Hi") &&
    [ "$a" = "$b" ] && ok || bad "same seed, different text"
out=$($bin generate --model $m --json --num-return-sequences 3 --max-new-tokens 4 "x") &&
    printf '%s' "$out" | python3 -c 'import json,sys; assert len(json.load(sys.stdin)) == 3' && ok || bad "num-return-sequences"
# Greedy CLI output equals the committed transformers continuation for prompt 0.
want=$(python3 -c 'import json; print(json.load(open("tests/data/ref/tiny/meta.json"))["greedy"][0][:16])')
cont=$($bin generate --model $m --greedy --ignore-eos --no-prompt --max-new-tokens 16 "Once upon a time") &&
    got=$($bin tokenize --model $m "$cont") && [ "$got" = "$want" ] && ok || bad "greedy CLI: $got vs $want"

# A model whose EOS is its first greedy token (an ordinary token): generation stops
# right after it, in both output modes.
eosdir=$(mktemp -d)
for f in config.json vocab.json merges.txt; do cp $m/$f "$eosdir/"; done
ln -s "$(cd $m && pwd)/model.safetensors" "$eosdir/model.safetensors"
t0id=$(python3 -c 'import json; print(json.load(open("tests/data/ref/tiny/meta.json"))["greedy"][0][0])')
t0=$($bin tokenize --model $m --decode "[$t0id]")
printf '{"eos_token_id": %s}' "$t0id" > "$eosdir/generation_config.json"
out=$($bin generate --model "$eosdir" --greedy --max-new-tokens 5 --no-prompt "Once upon a time") &&
    [ "$out" = "$t0" ] && ok || bad "stop at EOS (stream): '$out' vs '$t0'"
out=$($bin generate --model "$eosdir" --greedy --max-new-tokens 5 --json "Once upon a time") &&
    [ "$out" = "[{\"generated_text\":\"Once upon a time$t0\"}]" ] && ok || bad "stop at EOS (json): $out"
rm -rf "$eosdir"

expect_err() { # expected exit code, needle, command...
    code=$1; needle=$2; shift 2
    err=$("$@" 2>&1 >/dev/null); rc=$?
    if [ $rc -eq "$code" ] && printf '%s' "$err" | grep -q -- "$needle" && [ "$(printf '%s\n' "$err" | head -c 4000 | wc -l)" -le 30 ]; then ok
    else bad "$* -> rc $rc: $err"; fi
}
expect_err 1 "not a model directory" $bin generate --model /nonexistent "x"
expect_err 2 "--top-p" $bin generate --model $m --top-p 2 "x"
expect_err 2 "--max-new-tokens" $bin generate --model $m --max-new-tokens -1 "x"
expect_err 2 "--temperature" $bin generate --model $m --temperature abc "x"
expect_err 1 "context" $bin generate --model $m --max-new-tokens 100000 "x"
# transformers >= 4.52's pipeline defaults: 256 new tokens, which tiny's 128 positions cannot hold
expect_err 1 "at most 125 new tokens" $bin generate --model $m "Once upon a time"
expect_err 2 "--pipeline-defaults" $bin generate --model $m --pipeline-defaults 3.0 "x"
# --max-length truncates the prompt as the pipeline's tokenizer does; under 4.51's defaults
# (no max_new_tokens) a prompt that reaches max_length is refused, as transformers raises
expect_err 1 "max_length" $bin generate --model $m --pipeline-defaults 4.51 --max-length 2 "Once upon a time"
# 4.51's defaults for a model without task_specific_params: 20 new tokens, greedy
out=$($bin generate --model $m --pipeline-defaults 4.51 --json "Once upon a time") &&
    [ "$out" = "$($bin generate --model $m --greedy --max-new-tokens 20 --json "Once upon a time")" ] && ok ||
    bad "4.51 defaults: $out"
# n_positions + 1 tokens fit: the last one is never fed back
out=$($bin generate --model $m --greedy --max-new-tokens 125 --no-prompt "Once upon a time") && ok ||
    bad "prompt + new = n_positions + 1: $out"
expect_err 1 "context" $bin generate --model $m --greedy --max-new-tokens 126 "Once upon a time"
expect_err 1 "empty prompt" $bin generate --model $m ""
expect_err 2 "unknown command" $bin frobnicate
expect_err 1 "bad token id" $bin tokenize --model $m --decode "[1, x]"
expect_err 1 "unknown" $bin tokenize --model $m --decode "[99999999]"
echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
