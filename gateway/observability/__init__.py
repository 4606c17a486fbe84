"""What the gateway tells its operators: logs, metrics, traces, recent requests, energy."""
