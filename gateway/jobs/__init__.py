"""Async jobs: submit, the queue, the runner, the job routes, ``Prefer`` and webhooks."""
