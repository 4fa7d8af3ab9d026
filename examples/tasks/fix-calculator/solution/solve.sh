#!/bin/bash
set -e
cd /app/calc
python3 - <<'PY'
import re
p = "tokens.py"
s = open(p).read()
s = s.replace("    # BUG: a trailing number is dropped\n    return tokens", "    if number:\n        tokens.append(int(number))\n    return tokens")
open(p, "w").write(s)
p = "evaluate.py"
s = open(p).read()
start = s.index("    # Second pass")
s = s[:start] + """    # Second pass: + and -, left to right
    result = out[0]
    for op, value in zip(out[1::2], out[2::2]):
        result = _apply(op, result, value)
    return result
"""
open(p, "w").write(s)
PY
