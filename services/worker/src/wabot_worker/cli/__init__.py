"""``wabot``: the operator's command line.

* ``wabot erase --chat <remoteJid> [--instance NAME]``: remove every stored
  message of one chat (rows, stream entries, dead letters, failure counters);
* ``wabot reencrypt``: move sealed content to the current key, in bounded,
  resumable batches;
* ``wabot redrive [--count N] [--id ID ...]``: move dead letters back onto
  the stream (also ``worker redrive``);
* ``wabot redrive-replies [--count N] [--id ID ...] [--chat JID]``: failed
  replies back to pending, to be sent again;
* ``wabot trace <trace_id | message_id | stream_id> [--show-content] [--json]``:
  one message's whole story (row, stream, dead letter, replies, trace, logs).

Each prints a JSON summary and writes an audit row (``healthcare.audit_log``)
with the operator (``WABOT_OPERATOR``, else the login name) and the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from wabot_shared.logs import configure_logging
from wabot_shared.settings import load_settings
from wabot_worker.cli.erase import erase
from wabot_worker.cli.redrive import redrive
from wabot_worker.cli.reencrypt import reencrypt
from wabot_worker.cli.replies import redrive_replies
from wabot_worker.cli.story import render, story
from wabot_worker.settings import WorkerSettings

PROGRAM = "wabot"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("erase", help="remove every stored message of one chat")
    e.add_argument("--chat", required=True, help="the chat's remoteJid (5511...@s.whatsapp.net)")
    e.add_argument("--instance", help="only this instance's messages of that chat")
    r = sub.add_parser("reencrypt", help="move sealed content to the current key")
    r.add_argument("--batch", type=int, default=500, help="rows per transaction")
    r.add_argument("--max-batches", type=int, default=10_000, help="stop after this many")
    d = sub.add_parser("redrive", help="move dead-lettered messages back to the stream")
    d.add_argument("--count", type=int, default=100, help="at most this many (oldest first)")
    d.add_argument("--id", action="append", default=[], dest="ids", help="a dead-letter entry id")
    rr = sub.add_parser("redrive-replies", help="send failed replies again")
    rr.add_argument("--count", type=int, default=100, help="at most this many (oldest first)")
    rr.add_argument("--id", action="append", type=int, default=[], dest="ids", help="an outbox id")
    rr.add_argument("--chat", help="only this chat's (remoteJid)")
    t = sub.add_parser("trace", help="one message's whole story")
    t.add_argument("id", help="a trace id, a WhatsApp message id or a stream entry id")
    t.add_argument("--show-content", action="store_true", help="also its text (opened)")
    t.add_argument("--json", action="store_true", help="JSON instead of text")
    return parser


def run(argv: Sequence[str]) -> dict[str, Any]:
    """Run one command; returns its JSON summary (trace: its story)."""
    args = _parser().parse_args(argv)
    settings = load_settings(WorkerSettings, PROGRAM)
    # stdout is the summary; log lines go to stderr.
    configure_logging(PROGRAM, settings.log_level, stream=sys.stderr)
    if args.command == "erase":
        return asyncio.run(erase(settings, args.chat, args.instance))
    if args.command == "reencrypt":
        return asyncio.run(reencrypt(settings, args.batch, args.max_batches))
    if args.command == "redrive-replies":
        return redrive_replies(settings, args.count, args.ids, args.chat)
    if args.command == "trace":
        return asyncio.run(
            story(
                settings,
                args.id,
                show_content=args.show_content,
                jaeger_url=settings.jaeger_query_url,
                logs_url=settings.logs_query_url,
            )
        )
    return asyncio.run(redrive(settings, args.count, args.ids))


def main() -> None:
    """Console entry point of ``wabot``."""
    argv = sys.argv[1:]
    summary = run(argv)
    if argv and argv[0] == "trace" and "--json" not in argv:
        print(render(summary))
    else:
        print(json.dumps(summary, sort_keys=True, default=str))
    if argv and argv[0] == "trace" and not summary["found"]:
        sys.exit(1)  # nothing anywhere by that id: scripts can tell
