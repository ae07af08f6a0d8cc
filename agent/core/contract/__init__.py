"""The MQTT contract (``lepton/v1``), sans I/O: topic names and every message's encoder and
decoder. The JSON Schemas they satisfy are in ``agent/schemas`` (``tests/test_contract.py``
validates each encoder's output against its schema); docs/contract.md describes them."""
