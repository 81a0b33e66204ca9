"""The HTTP API on the Unix socket: the aiohttp app, peer checks, the OpenAPI document."""
