"""Admission: who may call, how often, and at what cost, before the gateway spends anything on a request."""
