"""``organdetr models``: list the installed models (the names ``--model`` accepts, version, organs, folder)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args: argparse.Namespace) -> int:
    from .model_catalog import installed_models  # imports torch (through organdetr.checkpoint)

    models = installed_models()
    if args.json:
        listing = [
            {
                "names": list(model.names()),
                "name": model.full_name,
                "version": model.version,
                "classes": list(model.classes),
                "folder": str(model.directory),
                "default": model.default,
            }
            for model in models
        ]
        print(json.dumps(listing, indent=2, ensure_ascii=False))
        return 0
    for model in models:
        print(f"{' / '.join(model.names())}: {model.full_name} {model.version}")
        print(f"  organs: {', '.join(model.classes)}")
        print(f"  folder: {model.directory}")
    if not models:
        print("no installed models; pass the folder of a trained model to --model")
    return 0
