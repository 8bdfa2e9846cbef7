"""Quick start: sign up (or log in), submit a batch of simulated tasks, wait for them without polling.

python examples/quickstart.py --server localhost:8080 --email me@example.com --password 'a long password'
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import resilienttask


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:8080")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()

    with resilienttask.Client(args.server) as client:
        try:
            client.signup(args.email, args.password)
        except resilienttask.AlreadyExists:
            client.login(args.email, args.password)

        tasks = client.submit(
            "quickstart",
            workload=timedelta(milliseconds=500),
            max_runtime=timedelta(minutes=1),
            replicas=args.replicas,
        )
        print(f"submitted batch {tasks[0].batch_id}: {len(tasks)} tasks")

        def show(task: resilienttask.Task) -> None:
            print(f"  replica {task.replica_index}: {task.status.value:<9} {task.progress:6.1%}")

        finished = client.wait(tasks, timeout=60, on_change=show)
        print(client.stats())
        return 0 if all(t.succeeded for t in finished) else 1


if __name__ == "__main__":
    raise SystemExit(main())
