"""The daemon's core: the service over the engines, its state store, the
`hostagent serve` wiring, metrics and logging."""
