#!/bin/bash
mkdir -p /logs/verifier
want=$(awk '{s += $1} END {print s}' /app/numbers.txt)
if [ "$(tr -d '[:space:]' < /app/answer.txt 2>/dev/null)" = "$want" ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
