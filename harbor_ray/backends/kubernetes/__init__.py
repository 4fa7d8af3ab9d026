"""The Kubernetes backend: config.py (its settings), api.py (client configuration, retries, API errors),
pods.py (the pod manifest, status, watches), exec.py (`pods/exec` streams), backend.py (`KubernetesBackend`).
The kubernetes client is imported only when used."""
