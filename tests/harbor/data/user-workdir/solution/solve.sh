#!/bin/bash
set -e
{
  echo "user=$(id -un)"
  echo "pwd=$(pwd)"
  echo "image=$IMAGE_GREETING"
  echo "task=$TASK_VAR"
  echo "entrypoint=$(cat /tmp/entrypoint-ran)"
} > answer.txt
