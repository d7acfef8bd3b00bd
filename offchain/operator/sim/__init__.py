"""The fault simulator: a seeded workload against the real services, fault injection and an independent checker."""
