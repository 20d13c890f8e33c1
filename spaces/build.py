"""Assemble (and optionally upload) the Hugging Face Space that runs the same app.py.

    python spaces/build.py --output_dir space/                      # a folder to inspect or run: cd space && python app.py
    python spaces/build.py --output_dir space/ --repo_id you/gm-hub # ... and upload it as a Gradio Space

The Space holds this folder's README.md (Space metadata) and requirements.txt, the repository's app.py, the
gm_hub package and the pretrained/ models: nothing else (no tests, no training checkpoints).
"""

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ("config.json", "model.safetensors", "README.md", "samples.png", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "model_index.json")


def build_space(output_dir: Path) -> list[Path]:
    """Copy what the Space needs into output_dir; returns the files written."""
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "app.py", output_dir / "app.py")
    for name in ("README.md", "requirements.txt"):
        shutil.copy2(ROOT / "spaces" / name, output_dir / name)
    shutil.copytree(ROOT / "gm_hub", output_dir / "gm_hub", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for model in sorted((ROOT / "pretrained").glob("*/")):
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
    args = parser.parse_args()
    files = build_space(args.output_dir)
    print(f"{len(files)} files in {args.output_dir}")
    if args.repo_id:
        from huggingface_hub import HfApi

        api = HfApi(token=args.hub_token)
        api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
        api.upload_folder(repo_id=args.repo_id, repo_type="space", folder_path=args.output_dir)
        print(f"uploaded to https://huggingface.co/spaces/{args.repo_id}")


if __name__ == "__main__":
    main()
