"""`lepton-agent models inspect`: a model's tensors, metadata, labels and (inferred) task.

It never fails on a valid TFLite file: what the agent cannot run yet is reported with what a
manifest must add; only a path that is not a TFLite model (or is truncated) is an error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models inspect`` (and ``keygen``, ``sign``, ``verify``) and their flags."""
    models = sub.add_parser("models", help="model tools")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    inspect = models_sub.add_parser(
        "inspect", help="print tensors, metadata, labels and the (inferred) task of a model")
    inspect.add_argument("path", type=Path)
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--delegate", choices=["xnnpack", "none", "reference"], default="xnnpack")
    inspect.add_argument("--labels", type=Path, metavar="FILE",
                         help="check this label file against the model")
    inspect.add_argument("--write-manifest", type=Path, metavar="DIR",
                         help="write a bundle (model, labels, manifest.json to edit) to DIR")
    inspect.set_defaults(func=cmd_models_inspect)
    from agent.cli import model_signing  # keygen, sign, verify: signed bundles (docs/ota.md)

    model_signing.add_parsers(models_sub)


def _tensor_line(t: dict[str, object]) -> str:
    q = t["quantization"]
    quant = (f" q(scale={q['scale']:.6g}, zero={q['zero_point']})"  # type: ignore[index]
             if q else "")
    return f"    [{t['index']}] {t['name']} {t['shape']} {t['dtype']}{quant}"


def cmd_models_inspect(args: argparse.Namespace) -> int:
    from agent.inference.inspect import inspect_model, write_bundle

    report = inspect_model(args.path, labels=args.labels, delegate=args.delegate)
    data = report.to_json()
    try:
        written = write_bundle(report, args.write_manifest) if args.write_manifest else None
    except OSError as exc:
        raise ConfigError(f"cannot write the bundle to {args.write_manifest}: "
                          f"{exc.strerror or exc}", key="--write-manifest",
                          fix="give a directory you can write to") from exc
    if written is not None:
        data["written"] = str(written)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    model = report.model
    print(f"{data['path']} ({data['runtime'] or 'does not load'})")
    if model is not None:
        print(f"  sha256 {model.manifest.sha256}")
    if data["description"]:
        print(f"  description: {data['description']}")
    for kind in ("inputs", "outputs"):
        print(f"  {kind}:")
        for t in data[kind]:
            print(_tensor_line(t))
    for op in data["custom_ops"]:
        provided = "provided by LiteRT" if op["provided"] else "NOT provided by LiteRT"
        print(f"  custom op: {op['name']} ({provided})")
    if data["metadata"]:
        print("  metadata: " + ", ".join(f"{k} ({v} bytes)" for k, v in data["metadata"].items()))
    if data["associated_files"]:
        print("  files packed with the model: " + ", ".join(data["associated_files"]))
    if data["labels"]:
        print(f"  labels: {data['labels']} from {data['labels_source']}")
    if report.load_error:
        print(f"  cannot run as it is: {report.load_error}")
        if report.load_fix:
            print(f"    fix: {report.load_fix}")
    if report.candidates:
        print("  candidate tasks:")
        for c in report.candidates:
            status = "ready" if c.complete else f"needs {c.lacks}"
            print(f"    {c.task}/{c.decoder} ({c.why}): {status}")
    else:
        print("  candidate tasks: none of the decoders reads these outputs (docs/models.md "
              "lists the shapes each one reads)")
    m = model.manifest if model else None
    if m is not None:
        print(f"  manifest ({'inferred' if m.inferred else 'declared'}): task={m.task} "
              f"decoder={m.decoder} input={m.input} color={m.color} "
              f"threshold={m.score_threshold} labels={len(m.labels)} offset={m.label_offset}")
        classes = "unknown" if model.classes is None else model.classes  # type: ignore[union-attr]
        print(f"    classes: {classes}; labels from "
              f"{model.labels_source or 'nowhere (class_N)'}")  # type: ignore[union-attr]
        for role, name in m.outputs.items():
            print(f"    {role}: {name}")
        for pair in m.state:
            print(f"    state: {pair.output} -> {pair.input} (fed back each frame)")
    if written is not None:
        print(f"  wrote {written}: edit it, then give its directory as --model")
    return 0
