"""The `corral` command line: a thin client of the REST API, plus the local launchers.

Layout:

- `main`: the root command, global options, error handling, and the command tree;
- `config`: the CLI's config file, server/token resolution, and the client factory
  (`CliState.client`; tests inject an httpx transport through `CliState.transport`);
- `params`: click parameter types for what users type (names, sizes, durations …);
- `output`: tables, detail blocks, JSON/YAML and time formatting;
- `auth`, `jobs` (+ `job_views`), `nodes`, `projects`, `admin`: the commands that talk
  to a server;
- `daemons`: `corral server` and `corral agent`;
- `local`: child-process orchestration (start, wait for health, stop by PID), used by
  `up` (`corral up`) and `demo` (`corral demo`, with its workload in `demo_workload`).
"""
