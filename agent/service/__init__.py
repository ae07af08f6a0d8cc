"""The agent's lifecycle: the app, signals, the command line."""
