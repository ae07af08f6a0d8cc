"""The web console (docs/web.md): an aiohttp app on the agent's event loop."""
