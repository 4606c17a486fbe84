"""``make soak``: the production topology on one machine, under mixed traffic and scheduled faults.

HAProxy in front of three gateway replicas, Redis with AOF, SeaweedFS as the S3 image store,
two remote local-backend workers (the tiny model on the CPU), the four provider emulators and
Prometheus with the shipped alert rules. Each part is started from the project's own files
(deploy/config, deploy/prometheus, tests/emulators, tests/seaweedfs) and stopped at the end.
``python -m soak --duration 600`` runs it and prints one summary (docs/operations.md, "Soak").
"""
