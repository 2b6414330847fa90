"""The producer's client side, in the producer process: listening sockets, client
connections, reading frames and writing replies, and the bounds on what they may hold
(memory, file descriptors). Knows nothing of workers."""
