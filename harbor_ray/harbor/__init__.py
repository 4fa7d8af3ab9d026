"""Harbor adapter: a Harbor BaseEnvironment on a leased sandbox, and a runner for Harbor's own Trials."""
