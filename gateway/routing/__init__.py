"""Routing: a model to its targets, retried and fallen back, with cooldowns, dedup and provider health."""
