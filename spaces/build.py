"""Assemble (and optionally upload) the Hugging Face Space that runs the same app.py.

    python spaces/build.py --output_dir space/                      # a folder to inspect or run: cd space && python app.py
    python spaces/build.py --output_dir space/ --repo_id you/gm-hub # ... and upload it as a Gradio Space
    python spaces/build.py --output_dir space/ --model vae=you/vae-mnist   # that family's model from the Hub

The Space holds this folder's README.md (Space metadata) and requirements.txt, the repository's app.py, the
gm_hub package and the pretrained/ models: nothing else (no tests, no training checkpoints). The README's
front matter gets what must match the build: sdk_version (the installed gradio), python_version (this Python)
and models (the Hub repo ids given with --model, whose shipped folders are left out).
"""

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ("config.json", "model.safetensors", "README.md", "samples.png", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "model_index.json")


def front_matter(models: dict[str, str]) -> dict:
    """spaces/README.md's front matter, completed for this build."""
    import gradio
    import yaml

    _, header, _ = (ROOT / "spaces" / "README.md").read_text(encoding="utf-8").split("---\n", 2)
    return {**yaml.safe_load(header), "sdk_version": gradio.__version__,
            "python_version": f"{sys.version_info.major}.{sys.version_info.minor}", "models": sorted(models.values())}


def build_space(output_dir: Path, models: dict[str, str] | None = None) -> list[Path]:
    """Copy what the Space needs into output_dir; returns the files written. `models`: family name -> Hub repo id
    to load instead of the shipped folder."""
    import yaml

    from gm_hub.registry import get_family

    models = models or {}
    skipped = {get_family(name).shipped_model for name in models}
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "app.py", output_dir / "app.py")
    shutil.copy2(ROOT / "spaces" / "requirements.txt", output_dir / "requirements.txt")
    body = (ROOT / "spaces" / "README.md").read_text(encoding="utf-8").split("---\n", 2)[2]
    header = yaml.safe_dump(front_matter(models), allow_unicode=True, sort_keys=False)
    (output_dir / "README.md").write_text(f"---\n{header}---\n{body}", encoding="utf-8")
    shutil.copytree(ROOT / "gm_hub", output_dir / "gm_hub", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for model in sorted((ROOT / "pretrained").glob("*/")):
        if model.name in skipped:
            continue
        for file in model.rglob("*"):
            if file.is_file() and (file.name in MODEL_FILES or file.parent != model) and "checkpoint-" not in str(file):
                target = output_dir / "pretrained" / file.relative_to(ROOT / "pretrained")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
    return sorted(p for p in output_dir.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--repo_id", help="upload the folder as this Gradio Space (needs a token with write access)")
    parser.add_argument("--hub_token", help="else HF_TOKEN or the saved login")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=REPO_ID",
                        help="load family NAME from this Hub repo instead of its shipped folder (repeatable)")
    args = parser.parse_args()
    models = dict(pair.split("=", 1) for pair in args.model)
    files = build_space(args.output_dir, models)
    print(f"{len(files)} files in {args.output_dir}")
    if args.repo_id:
        from huggingface_hub import HfApi

        api = HfApi(token=args.hub_token)
        api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
        for name, repo_id in models.items():
            api.add_space_variable(args.repo_id, f"GM_HUB_{name.upper()}_MODEL", repo_id)
        api.upload_folder(repo_id=args.repo_id, repo_type="space", folder_path=args.output_dir)
        print(f"uploaded to https://huggingface.co/spaces/{args.repo_id}")


if __name__ == "__main__":
    main()
