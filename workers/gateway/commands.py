"""`conveyor keys add|list|revoke`: the gateway's API keys in Redis."""

from __future__ import annotations

import argparse
import sys

from workers.exits import registry_errors
from workers.gateway.keys import ApiKeys
from workers.ledger.connection import redis_client
from workers.names import RedisKeys
from workers.settings import Settings


async def run_keys_command(args: argparse.Namespace, settings: Settings) -> int:
    client = redis_client(settings.redis)
    store = ApiKeys(client, RedisKeys(settings.redis.key_prefix))
    try:
        with registry_errors(settings, "api keys"):
            if args.action == "add":
                key = await store.add(args.tenant)
                print(f"tenant {args.tenant}: key (shown once, keep it secret):")
                print(key)
            elif args.action == "list":
                for digest, tenant in sorted((await store.all()).items(), key=lambda kv: kv[1]):
                    print(f"{tenant}  sha256:{digest}")
            elif await store.revoke(args.key.removeprefix("sha256:")):
                print("key revoked")
            else:
                print("conveyor: no such key", file=sys.stderr)
                return 1
    finally:
        await client.aclose()
    return 0
