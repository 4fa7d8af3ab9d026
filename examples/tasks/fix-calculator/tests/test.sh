#!/bin/bash
# Run the python tests; reward is 1 only when all pass.
mkdir -p /logs/verifier
if python3 -m unittest discover -s /tests -p 'test_*.py' -v > /logs/verifier/unittest.log 2>&1; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
