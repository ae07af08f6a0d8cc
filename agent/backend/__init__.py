"""The datacenter side: the ingest consumer and its stores."""
