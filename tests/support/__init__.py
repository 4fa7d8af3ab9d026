"""Harnesses shared by the test tiers (and the benches): imported as `support.<module>`.

kubelet (the test kubelet, run as a script), k8s_cluster (etcd + kube-apiserver + that kubelet on loopback),
tls_proxy (a TLS or plain TCP listener in front of the Docker socket, run as a script), certs (a session PKI
made with openssl), procs (helper processes: free ports, readiness, teardown).
"""
