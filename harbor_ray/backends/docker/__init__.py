"""The Docker backend: config.py (its settings), endpoint.py (host strings, TLS, the client), exec.py (exec
streams with deadlines), backend.py (`DockerBackend`). The docker SDK is imported only when used."""
