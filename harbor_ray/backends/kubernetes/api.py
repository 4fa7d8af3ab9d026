"""Talking to the API server: a private client configuration per backend, retries, API errors in one line."""

from __future__ import annotations

import json
import os
from typing import Any

from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.errors import BackendUnavailable, ConfigError

__all__ = ["api_message", "call", "load_configuration", "retryable", "retrying"]


def api_message(e: Any) -> str:
    """The first line of an ApiException's Status message (or its reason)."""
    try:
        text = json.loads(e.body or "{}").get("message") or e.reason
    except (ValueError, AttributeError, TypeError):
        text = getattr(e, "reason", None) or str(e)
    text = str(text).strip()
    return text.splitlines()[0] if text else type(e).__name__


def retryable(e: BaseException) -> bool:
    """409 Conflict, 429 (throttled), 5xx and connection errors are worth another try."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ApiException):
        if e.status == 409:  # a write conflict heals on retry; AlreadyExists (a create that went through) does not
            try:
                return json.loads(e.body or "{}").get("reason") != "AlreadyExists"
            except (ValueError, TypeError):
                return True
        return e.status == 429 or e.status >= 500
    return isinstance(e, urllib3.exceptions.HTTPError | ConnectionError)


def load_configuration(config: K8sBackendConfig) -> Any:
    """A private `kubernetes.client.Configuration` for this config; ConfigError with one line if unusable."""
    try:
        from kubernetes import client
        from kubernetes import config as kconfig
    except ImportError as e:
        msg = "the Kubernetes backend needs the kubernetes client: pip install 'harbor-ray[k8s]'"
        raise ConfigError(msg) from e
    cfg = client.Configuration()
    path = config.kubeconfig or os.environ.get("KUBECONFIG", "") or "~/.kube/config"
    where = "in-cluster config" if config.in_cluster else f"backend.kubeconfig={path}"
    try:
        if config.in_cluster:
            kconfig.load_incluster_config(client_configuration=cfg)
        else:
            files = [os.path.expanduser(p) for p in path.split(os.pathsep) if p]
            missing = [p for p in files if not os.access(p, os.R_OK)]
            if missing:
                msg = f"backend.kubeconfig={missing[0]}: no such readable file; give a kubeconfig path (or in_cluster)"
                raise ConfigError(msg)
            kconfig.load_kube_config(
                config_file=os.pathsep.join(files),
                context=config.context or None,
                client_configuration=cfg,
                persist_config=False,
            )
    except ConfigError:
        raise
    except Exception as e:  # ConfigException, yaml errors, missing keys: all mean an unusable config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"{where}: {first}"
        raise ConfigError(msg) from e
    cfg.connection_pool_maxsize = max(32, 4 * config.max_concurrent_creates)
    cfg.retries = False  # tenacity retries, with backoff; urllib3 would retry at once
    return cfg


def retrying() -> Any:
    """The retry policy of API calls: `retryable` errors, jittered backoff, at most 6 tries within 60s."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

    return Retrying(
        retry=retry_if_exception(retryable),
        wait=wait_random_exponential(multiplier=0.2, max=5),
        stop=stop_after_attempt(6) | stop_after_delay(60),
        reraise=True,
    )


def call(retry: Any, host: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the API under `retry`; what is not the caller's to handle becomes BackendUnavailable, one line.

    Other ApiExceptions (404, 409, 422, …) are the caller's and pass through.
    """
    import urllib3
    from kubernetes.client.exceptions import ApiException

    kwargs.setdefault("_request_timeout", (10, 60))
    try:
        return retry(fn, *args, **kwargs)
    except ApiException as e:
        if e.status in (401, 403):
            msg = f"k8s API at {host} refused us ({e.status}: {api_message(e)}); check credentials and RBAC"
            raise BackendUnavailable(msg) from e
        if e.status == 429 or e.status >= 500:
            msg = f"k8s API at {host} failed after retries ({e.status}: {api_message(e)})"
            raise BackendUnavailable(msg) from e
        raise
    except (urllib3.exceptions.HTTPError, OSError) as e:
        msg = f"k8s API at {host} unreachable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        raise BackendUnavailable(msg) from e
