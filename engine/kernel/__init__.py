"""The kernel: syscalls in, results out (scheduler, context manager; storage, memory, tools and access to come)."""
