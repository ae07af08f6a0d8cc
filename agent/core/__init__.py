"""Pure logic: no asyncio, no sockets, no files. Everything here is tested without an event loop."""
