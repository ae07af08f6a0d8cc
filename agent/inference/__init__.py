"""LiteRT inference: model bundles, manifests, the runner thread."""
