"""The kernel: syscalls in, results out (scheduler, context manager, storage, memory, tools, access); see kernel.py."""
