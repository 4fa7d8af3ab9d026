#!/bin/bash
set -e
python3 - <<'PY'
import json, re
text = open("/app/poem.txt").read()
words = re.findall(r"[A-Za-z']+", text)
longest = max((w.lower() for w in words), key=len)
json.dump({"lines": len(text.splitlines()), "words": len(words), "longest_word": longest}, open("/app/stats.json", "w"))
PY
