"""Agent runtimes built once per host and mounted read-only into sandboxes (issue 27)."""
