"""hostagent-cli: commands over the agent's socket, and the local ones
(preflight, multipath) that need no daemon."""
