"""`lepton-agent models inspect`: a model's tensors and its (inferred) manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models inspect`` and its flags to the subcommands."""
    models = sub.add_parser("models", help="model tools")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    inspect = models_sub.add_parser("inspect", help="print tensors and the (inferred) manifest")
    inspect.add_argument("path", type=Path)
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--delegate", choices=["xnnpack", "none", "reference"], default="xnnpack")
    inspect.add_argument("--labels", type=Path, metavar="FILE",
                         help="check this label file against the model")
    inspect.set_defaults(func=cmd_models_inspect)
    from agent.cli import model_signing  # keygen, sign, verify: signed bundles (docs/ota.md)
    model_signing.add_parsers(models_sub)


def cmd_models_inspect(args: argparse.Namespace) -> int:
    from agent.inference.model import load_model
    from agent.inference.tflite_file import PROVIDED_CUSTOM_OPS, custom_ops, read_ops

    model = load_model(args.path, num_threads=1, delegate=args.delegate, labels=args.labels)
    custom = custom_ops(read_ops(model.path) or [])
    data = {
        "path": str(model.path), "runtime": model.runtime, "custom_ops": custom,
        "classes": model.classes, "labels_source": model.labels_source or None,
        "inputs": [vars(t) | {"shape": list(t.shape)} for t in model.inputs],
        "outputs": [vars(t) | {"shape": list(t.shape)} for t in model.outputs],
        "manifest": model.manifest.to_json(),
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    m = model.manifest
    print(f"{model.path} ({model.runtime})\n  sha256 {m.sha256}")
    for kind in ("inputs", "outputs"):
        print(f"  {kind}:")
        for t in getattr(model, kind):
            quant = f" q(scale={t.scale:.6g}, zero={t.zero_point})" if t.quantized else ""
            print(f"    [{t.index}] {t.name} {list(t.shape)} {t.dtype}{quant}")
    print(f"  manifest ({'inferred' if m.inferred else 'declared'}): task={m.task} "
          f"decoder={m.decoder} input={m.input} color={m.color} "
          f"threshold={m.score_threshold} labels={len(m.labels)} offset={m.label_offset}")
    classes = "unknown" if model.classes is None else model.classes
    print(f"    classes: {classes}; labels from {model.labels_source or 'nowhere (class_N)'}")
    for op in custom:
        provided = "provided by LiteRT" if op in PROVIDED_CUSTOM_OPS else "registered by this runtime"
        print(f"    custom op: {op} ({provided})")
    for role, name in m.outputs.items():
        print(f"    {role}: {name}")
    for pair in m.state:
        print(f"    state: {pair.output} -> {pair.input} (fed back each frame)")
    return 0
