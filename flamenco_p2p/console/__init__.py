"""``flamenco-p2p console``: a terminal application for farm administrators.

The CLI parses the command's options and calls run_console. Textual is
imported only when the console starts, so that other commands do not pay
for it. docs/console.md describes the screens and keys.
"""

from __future__ import annotations

import asyncio

from flamenco_p2p.api.client import ApiClient


def run_console(url: str, token: str | None) -> int:
    """Run the console on the node at url until the user quits.

    Without a token the console is read-only. Returns the exit status.
    """
    from flamenco_p2p.console.app import ConsoleApp

    async def main() -> int:
        async with ApiClient(url, token) as api:
            result = await ConsoleApp(api).run_async()
        return result or 0

    return asyncio.run(main())
