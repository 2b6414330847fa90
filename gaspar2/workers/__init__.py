"""Worker processes and their supervision: the supervisor (run by the producer), the fork
server (a process of its own), the worker loop (each worker process), a remote worker group
(``gaspar2 worker``) and process utilities. Knows nothing of client connections."""
