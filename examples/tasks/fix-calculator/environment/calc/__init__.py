"""A tiny calculator with two bugs for the agent to fix."""
