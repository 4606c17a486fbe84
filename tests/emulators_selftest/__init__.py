"""Self-tests of the provider emulators in tests/emulators."""
