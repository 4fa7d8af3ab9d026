#!/bin/bash
# Under runc the host's kernel log is not readable (CAP_SYSLOG is dropped): dmesg then says why, which is kept.
uname -r > /app/uname.txt
dmesg > /app/dmesg.txt 2>&1 || true
