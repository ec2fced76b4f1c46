"""fieldtrace edge gateway: verify, durably buffer and forward upstream. See README.md."""
