"""Job runtimes: how a job's processes are started, watched, stopped and re-adopted.

`ProcessRuntime` runs jobs as host processes; a Docker runtime (issue 6) implements the
same `Runtime` protocol.
"""

from corral.agent.runtime.base import JobExit, JobHandle, Runtime, StartError
from corral.agent.runtime.process import ProcessRuntime

__all__ = ["JobExit", "JobHandle", "ProcessRuntime", "Runtime", "StartError"]
