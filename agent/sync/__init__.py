"""MQTT 5: the client link (reconnect, callbacks into asyncio) and the uplink of the outbox."""
