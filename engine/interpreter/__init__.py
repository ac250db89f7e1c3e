"""The interpreter: walks a compiled flow for one run (or many), each step a syscall to the kernel."""
