"""`foa creds` (broker logins, ACL, agent keys, trust store) and `foa keys` (one agent key)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fabric.settings import Settings


def register(sub: Any) -> None:
    creds = sub.add_parser("creds", help="broker credentials, ACL, agent signing keys and trust store")
    creds_sub = creds.add_subparsers(dest="creds_command", metavar="ACTION", required=True)

    init = creds_sub.add_parser(
        "init",
        help="generate logins, mosquitto password + ACL files, ed25519 keys and trust.json from agent specs",
        description="Re-running keeps existing passwords and keys (new agents get new ones) unless --rotate.",
    )
    init.add_argument("--specs", type=Path, default=None, help="folder of agent specs (default: the shipped agents)")
    init.add_argument("--out", type=Path, default=Path("deploy/creds"), help="output folder (default deploy/creds)")
    init.add_argument("--rotate", action="store_true", help="new passwords and new keys for everyone")
    init.add_argument("--json", action="store_true", help="print what was written as JSON")
    init.set_defaults(func=_creds_init)

    acl = creds_sub.add_parser("acl", help="print the mosquitto ACL for the agent specs")
    acl.add_argument("--specs", type=Path, default=None)
    acl.set_defaults(func=_creds_acl)

    keys = sub.add_parser("keys", help="ed25519 signing keys for agents")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = keys_sub.add_parser("gen", help="generate {agent_id}.key (0600) and {agent_id}.pub")
    gen.add_argument("agent_id")
    gen.add_argument("--out", type=Path, default=Path("deploy/creds/keys"))
    gen.add_argument("--force", action="store_true", help="overwrite an existing key")
    gen.set_defaults(func=_keys_gen)


def _agent_ids(specs_dir: Path | None) -> list[str]:
    from agents.spec import default_specs_dir, load_specs

    return [spec.id for spec in load_specs(specs_dir or default_specs_dir())]


def _creds_init(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.acl import CredentialBundle, read_existing_passwords

    ids = _agent_ids(args.specs)
    existing = read_existing_passwords(args.out)
    bundle = CredentialBundle.create(ids, existing=existing, rotate=args.rotate)
    written = bundle.write(args.out, rotate_keys=args.rotate)
    summary = {"agents": ids, "logins": [p.username for p in bundle.principals], **written}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    reused = sum(1 for p in bundle.principals if p.username in existing) if not args.rotate else 0
    print(
        f"wrote credentials for {len(ids)} agents and {len(bundle.principals) - len(ids)} service logins to {args.out}"
    )
    if reused:
        print(f"  kept {reused} existing passwords (use --rotate for new ones)")
    for what, path in written.items():
        print(f"  {what:12s} {path}")
    print("mosquitto: password_file/acl_file point at passwd/acl; compose: --env-file " + written["env"])
    print("routers:   FOA_TRUST_STORE=" + written["trust_store"] + "   agents: FOA_AGENT_KEY_DIR=" + written["keys"])
    return 0


def _creds_acl(args: argparse.Namespace, settings: Settings) -> int:
    from fabric.acl import acl_file

    print(acl_file(_agent_ids(args.specs)), end="")
    return 0


def _keys_gen(args: argparse.Namespace, settings: Settings) -> int:
    from fabric import security

    path = security.agent_key_path(args.out, args.agent_id)
    if path.exists() and not args.force:
        raise FileExistsError(f"{path} exists (use --force to replace it; routers must then trust the new key)")
    key = security.generate_key()
    security.save_private_key(key, path)
    pub = security.save_public_key(key, path.with_suffix(".pub"))
    print(
        json.dumps(
            {"agent_id": args.agent_id, "key": str(path), "pub": str(pub), "public_key": security.public_key_b64(key)}
        )
    )
    return 0
