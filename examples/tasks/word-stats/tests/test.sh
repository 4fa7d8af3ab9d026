#!/bin/bash
# Several rewards: one per key, and their mean as "reward".
mkdir -p /logs/verifier
python3 - <<'PY'
import json, re
text = open("/app/poem.txt").read()
words = re.findall(r"[A-Za-z']+", text)
want = {"lines": len(text.splitlines()), "words": len(words), "longest_word": max((w.lower() for w in words), key=len)}
try:
    got = json.load(open("/app/stats.json"))
except Exception:
    got = {}
scores = {key: float(got.get(key) == value) for key, value in want.items()}
scores["reward"] = sum(scores.values()) / len(want)
json.dump(scores, open("/logs/verifier/reward.json", "w"))
PY
