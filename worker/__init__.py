"""Worker processes: pull session start jobs from a pool's queue and own the live pipelines."""
