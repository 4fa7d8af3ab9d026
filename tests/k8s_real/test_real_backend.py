"""The test-kubelet tier's behaviour tests, run unchanged against the real node (same fixture names).

What stays only in tests/k8s: fault injection through the proxy, request counts (a real kubelet's own
GET/PATCH traffic on pods is in the apiserver's counters too), and messages only the test kubelet makes.
"""

from __future__ import annotations

import pytest
from k8s.test_cli_k8s import test_clean_pods_removes_only_ours, test_healthy_cluster_passes_with_a_probe_pod
from k8s.test_k8s_api_behaviour import test_placement_settings_reach_the_pod, test_run_as_non_root_is_enforced
from k8s.test_k8s_ops import (
    test_clean_by_prefix_removes_ours_and_only_ours,
    test_preflight_passes_on_the_healthy_cluster,
)
from k8s.test_k8s_trial import ray_session, test_oracle_and_nop_trials_on_pods
from k8s.test_kubernetes_backend import (
    backend,
    test_32_concurrent_sandboxes,
    test_bad_inputs_give_one_line,
    test_exec_timeout_kills_the_command,
    test_lifecycle_exec_and_pod_shape,
    test_output_is_capped,
    test_ping_and_protocol,
    test_private_configuration_per_instance,
    test_start_fails_fast_with_err_image_never_pull,
    test_start_timeout_names_unschedulable,
    test_ttl_backstop_ends_the_pod,
    test_upload_download_files_and_directories,
    test_user_switching,
)

pytestmark = [pytest.mark.k8s_real, pytest.mark.docker]

__all__ = [
    "backend",
    "ray_session",
    "test_32_concurrent_sandboxes",
    "test_bad_inputs_give_one_line",
    "test_clean_by_prefix_removes_ours_and_only_ours",
    "test_clean_pods_removes_only_ours",
    "test_exec_timeout_kills_the_command",
    "test_healthy_cluster_passes_with_a_probe_pod",
    "test_lifecycle_exec_and_pod_shape",
    "test_oracle_and_nop_trials_on_pods",
    "test_output_is_capped",
    "test_ping_and_protocol",
    "test_placement_settings_reach_the_pod",
    "test_preflight_passes_on_the_healthy_cluster",
    "test_private_configuration_per_instance",
    "test_run_as_non_root_is_enforced",
    "test_start_fails_fast_with_err_image_never_pull",
    "test_start_timeout_names_unschedulable",
    "test_ttl_backstop_ends_the_pod",
    "test_upload_download_files_and_directories",
    "test_user_switching",
]
