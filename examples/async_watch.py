"""Follow your tasks live with the asyncio client; the watch reconnects by itself if a gateway dies.

python examples/async_watch.py --server localhost:8080 --email me@example.com --password 'a long password'
"""

from __future__ import annotations

import argparse
import asyncio

import resilienttask


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:8080")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()

    async with resilienttask.AsyncClient(args.server) as client:
        await client.login(args.email, args.password)
        async with client.watch() as events:
            async for event in events:
                if isinstance(event, resilienttask.Snapshot):
                    print(f"{len(event.tasks)} recent tasks; {event.stats}")
                elif isinstance(event, resilienttask.TaskUpdate):
                    task = event.task
                    print(f"{task.id} {task.name} {task.status.value} {task.progress:.0%}")


if __name__ == "__main__":
    asyncio.run(main())
