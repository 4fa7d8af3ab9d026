#!/bin/bash
# Reward 1 when the agent ran as the image's USER in its WORKDIR with the image's and the task's ENV after the
# image's ENTRYPOINT, and this verifier runs as its [verifier] user with its [verifier] env; else 0.
expected="user=agent
pwd=/home/agent/work
image=from-image
task=from-task
entrypoint=ran as agent"
got="$(cat /home/agent/work/answer.txt 2>/dev/null)"
if [ "$got" = "$expected" ] && [ "$(id -u)" = 0 ] && [ "$VERIFIER_VAR" = from-verifier ] \
   && [ "$(stat -c "%U %a" /logs/agent /logs/artifacts)" = "root 777
root 777" ]; then
  echo 1 > /logs/verifier/reward.txt
else
  printf 'got:\n%s\nverifier uid %s, VERIFIER_VAR=%s, /logs: %s\n' "$got" "$(id -u)" "$VERIFIER_VAR" \
    "$(stat -c "%n %U %a" /logs/agent /logs/artifacts | tr '\n' ' ')"
  echo 0 > /logs/verifier/reward.txt
fi
