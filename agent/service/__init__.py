"""The device runtime: the app, its tasks, signals, sd_notify, health, metrics, logging."""
