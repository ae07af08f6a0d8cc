"""LiteRT inference: model bundles and manifests, the runner, the inference worker thread."""
