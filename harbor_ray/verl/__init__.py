"""verl adapter: an agent loop whose episodes run in fresh harbor_ray sandboxes and whose reward is the task's
Harbor verifier, plus the dataset writer that turns Harbor task directories into a verl parquet.

Importing this package imports nothing heavy; `harbor_ray.verl.agent_loop` needs the `[verl]` extra.
"""

AGENT_NAME = "harbor_sandbox"  # the agent_name column value and the registered agent-loop name

__all__ = ["AGENT_NAME"]
