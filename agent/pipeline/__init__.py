"""The pipeline's shared plumbing: bounded queues between stages and the frame they carry."""
