"""What Client.logs and AsyncClient.logs share: converting lines, and where a reopened stream resumes."""

from __future__ import annotations

from dataclasses import dataclass

from resilienttask._convert import _moment
from resilienttask.models import LogLine
from resilienttask.v1 import scheduler_pb2

STREAM_NAMES = {
    scheduler_pb2.LOG_STREAM_LOGGER: "logger",
    scheduler_pb2.LOG_STREAM_STDOUT: "stdout",
    scheduler_pb2.LOG_STREAM_STDERR: "stderr",
}


@dataclass
class LogCursor:
    """How far a log was read: a stream reopened after a broken connection asks for the lines after `sequence`."""

    task_id: str
    follow: bool
    sequence: int = 0
    # Lines the service reported missing (dropped by its bounds), in total so far.
    dropped: int = 0
    finished: bool = False

    def request(self) -> scheduler_pb2.WatchTaskLogsRequest:
        return scheduler_pb2.WatchTaskLogsRequest(
            task_id=self.task_id, after_sequence=self.sequence, follow=self.follow
        )

    def take(self, message: scheduler_pb2.WatchTaskLogsResponse) -> list[LogLine]:
        """The message's lines as values (each with the gap before it), and the cursor moved past them."""
        lines = []
        for line in message.lines:
            gap = max(0, line.sequence - self.sequence - 1)
            self.dropped += gap
            self.sequence = line.sequence
            lines.append(
                LogLine(
                    sequence=line.sequence,
                    at=_moment(line.at) if line.HasField("at") else None,
                    attempt=line.attempt,
                    stream=STREAM_NAMES.get(line.stream, "unspecified"),
                    level=line.level,
                    text=line.text,
                    dropped_before=gap,
                )
            )
        if message.finished:
            self.dropped += message.dropped
            self.finished = True
        return lines
