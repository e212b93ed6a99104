"""CLI verb of the server:

    humanizer serve [--model M] [--adapter DIR]... [--host H] [--port P] [--api-key KEY] [limits...] [--json]"""

from __future__ import annotations

import os

from engine.serve import settings as S  # light: no aiohttp, no MLX
from tui.cli.common import add_json, run_long


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible server: one model, several adapters, each request picks its own",
                       description="Serve MODEL over an OpenAI-compatible API with the --adapter folders mounted. "
                       "Each request picks 'base', one adapter or a stack ('sft+dpo') with the body field "
                       "\"adapter\" or a model id from /v1/models. Stop with SIGTERM or Ctrl-C.")
    p.set_defaults(handler=cmd_serve)
    p.add_argument("--model", default="smollm2-135m",
                   help="model spec: smollm2-135m (default), a model folder, a .gguf, a workspace model, an HF repo id")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR", dest="adapters",
                   help="adapter folder (or name in the workspace's adapters/) to mount; repeat for more, "
                   "a DPO delta after its parent")
    p.add_argument("--host", default=S.DEFAULT_HOST, help=f"address to bind (default {S.DEFAULT_HOST}; "
                   "any other address needs --api-key)")
    p.add_argument("--port", type=int, default=S.DEFAULT_PORT)
    p.add_argument("--api-key", default=os.environ.get("HUMANIZER_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                   "(default: $HUMANIZER_API_KEY)")
    p.add_argument("--max-concurrent", type=int, default=8, metavar="N",
                   help="requests decoded together at most (more wait in a queue; default 8)")
    p.add_argument("--max-tokens-limit", type=int, default=S.DEFAULT_MAX_TOKENS_LIMIT, metavar="N",
                   help=f"largest max_tokens a request may ask for (default {S.DEFAULT_MAX_TOKENS_LIMIT})")
    p.add_argument("--max-prompt-tokens", type=int, default=S.DEFAULT_MAX_PROMPT_TOKENS, metavar="N",
                   help="longest prompt in tokens a request may send; longer ones get a 400 naming the limit "
                   f"(default {S.DEFAULT_MAX_PROMPT_TOKENS})")
    p.add_argument("--quantized", action="store_true",
                   help="keep quantized weights on the CPU backend (default: dequantize to float32, "
                   "which decodes faster there; Metal always keeps them)")
    p.add_argument("--max-connections", type=int, metavar="N",
                   help="open connections at most; more are answered 503 (default: half the open-file limit, "
                   "at most 512)")
    p.add_argument("--header-timeout", type=float, default=S.DEFAULT_HEADER_TIMEOUT, metavar="S",
                   help=f"seconds a request's headers may take to arrive (default {S.DEFAULT_HEADER_TIMEOUT:g}; "
                   "then 408 and close)")
    p.add_argument("--body-timeout", type=float, default=S.DEFAULT_BODY_TIMEOUT, metavar="S",
                   help=f"seconds a request's body may take after its headers (default {S.DEFAULT_BODY_TIMEOUT:g}; "
                   "then 408 and close)")
    p.add_argument("--keepalive-timeout", type=float, default=S.DEFAULT_KEEPALIVE_TIMEOUT, metavar="S",
                   help=f"seconds an idle keep-alive connection stays open (default {S.DEFAULT_KEEPALIVE_TIMEOUT:g})")
    add_json(p)


def cmd_serve(ws, args, argv) -> int:
    from engine.events import Cancelled
    from engine.serve import check_bind, check_port, serve

    check_bind(args.host, args.api_key)  # before loading anything
    check_port(args.host, args.port)
    try:
        url = run_long(ws, "serve", argv, args.json,
                       lambda run: serve(args.model, args.adapters, ws=ws, run=run, host=args.host, port=args.port,
                                         api_key=args.api_key, max_concurrent=args.max_concurrent,
                                         max_tokens_limit=args.max_tokens_limit,
                                         max_prompt_tokens=args.max_prompt_tokens,
                                         dequantize=False if args.quantized else None,
                                         header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                                         keepalive_timeout=args.keepalive_timeout,
                                         max_connections=args.max_connections))
    except Cancelled:  # stopped while loading
        return 130
    if not args.json:
        print(f"server on {url} stopped")
    return 0
