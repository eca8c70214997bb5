"""The node agent: discovers GPUs, runs jobs, reports to the server (it dials out)."""
