#!/bin/bash
# Keep what the sandbox saw next to the reward (Harbor brings /logs/verifier back); reward 1 when it was written.
mkdir -p /logs/verifier
cp /app/uname.txt /app/dmesg.txt /logs/verifier/ 2>/dev/null
if [ -s /app/uname.txt ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
