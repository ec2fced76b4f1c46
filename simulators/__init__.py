"""Virtual hardware, simulated fleets and local brokers for fieldtrace."""
